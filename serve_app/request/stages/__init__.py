"""The stages of a request: user features (the online store, with a deadline and a cache), retrieval
(FAISS and filters), ranking (XGBoost), and the fallbacks that settle a request a stage could not
serve. Each works on plain values (`Served`, `Scored`, numpy arrays), so it runs wherever it is called.

May import: core and the modules of this folder. No ray.
"""
