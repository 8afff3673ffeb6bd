"""Prefect flows: the nightly inference, backfill and refit recipes, and the local demo.

Flows only orchestrate the tasks in ``tasks/``; their parameters are validated by the
pydantic models in :mod:`flows.params` in their first lines. Importing this package does not
import Prefect (``python -m flows`` sets Prefect's home first).
"""
