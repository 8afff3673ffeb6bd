"""Drift of a night's predictions against the nights before it.

* :mod:`~semclip.drift.embedding`: the per-image CLS embedding summed where predictions are
  computed (the prediction rows do not carry it), staged per shard under
  ``drift/date=<D>/embeddings/``;
* :mod:`~semclip.drift.summary`: ``drift/date=<D>/summary.parquet`` (class histogram, score
  quantiles, mean CLS embedding) and the drift score against a reference window.
"""
