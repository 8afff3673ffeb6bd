"""Prefect tasks: thin wrappers around semclip library calls.

Each task takes and returns small, serialisable things (URIs, dates, ids, refs, counts),
never models or tensors; retries are set only on tasks that do I/O, and only for transient
errors (see :func:`tasks.common.retry_on_transient`).
"""
