"""Evaluation: the paper's few-shot protocol, baselines, ablations, reports and speed benchmark.

`run_evaluation` runs every selected method × k × seed on features computed once per image;
`write_report` turns its result into metrics.json, per_class.json, report.md and plots;
`run_bench` measures throughput and memory of the encoder, prediction and fine-tuning.
"""

from __future__ import annotations

from semclip.eval.protocol import ProtocolPlan, Split, plan_splits
from semclip.eval.registry import ORDER, MethodOutput, methods, register, resolve_methods
from semclip.eval.report import write_report
from semclip.eval.runner import EvalConfig, EvalResult, default_cache_dir, run_evaluation
from semclip.eval.scoring import RunResult

__all__ = [
    "ORDER",
    "EvalConfig",
    "EvalResult",
    "MethodOutput",
    "ProtocolPlan",
    "RunResult",
    "Split",
    "default_cache_dir",
    "methods",
    "plan_splits",
    "register",
    "resolve_methods",
    "run_evaluation",
    "write_report",
]
