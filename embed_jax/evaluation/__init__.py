"""Evaluation: metrics, sharded exact top-k search, the paper's tasks, and reports.

Modules: `metrics` (nDCG/MRR/Recall@k, Spearman), `search` (CorpusIndex,
top_k), `formats` (file readers), `linear_probe`, `retrieval` (dense + BM25),
`tasks` (the task registry), `report`, `runner`. Importing this package loads
no tensorflow.
"""
