"""The offline path: data -> Feast sources -> embeddings -> index -> ranker -> evaluation -> bundle.

data.py and synth.py read or make an interaction log; feature_tables.py and sources.py write the Feast
sources and read training features back (feast_ops.py: Feast's CLI and SDK); embeddings.py, index.py
and training.py fit the models; evaluation/ is the strict protocol on a temporal holdout; build.py
runs it all and publishes the bundle (docs/offline.md).

May import: core, request (the same retrieval and ranking code serving runs), events (the event log
a build reads), telemetry (the exposure measures). Never the Serve layer.
"""
