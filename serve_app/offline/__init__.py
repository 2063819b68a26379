"""The offline path: data -> Feast features -> embeddings -> index -> ranker -> evaluation -> bundle."""
