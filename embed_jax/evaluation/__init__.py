"""Evaluation: metrics, sharded exact top-k search, the paper's tasks, and reports.

Modules: `metrics` (nDCG/MRR/Recall@k, Spearman), `search` (CorpusIndex,
top_k), `formats` (file readers), `linear_probe`, `retrieval` (dense + BM25),
`tasks` (the task registry), `report`, `runner`, `model_embed` (a model
directory's recorded length and `--dim` truncation), `mining` (hard negatives
for `embed-jax mine`). Importing this package loads no tensorflow.
"""
