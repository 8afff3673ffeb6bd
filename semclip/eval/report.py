"""Evaluation outputs: metrics.json, per_class.json, confusion.json, report.md and the plots.

JSON holds fractions in [0, 1] or null, one record per method × k × seed (per class in
per_class.json). The Markdown report follows the paper's Tables 1-3 (mean ± std over seeds, in
percent) and says first, loudly, which backbone produced the numbers and whether its weights
were pretrained or random.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semclip.config import FitConfig
from semclip.data.dataset import left_out_heading
from semclip.eval.pixels import HISTOGRAM_BINS
from semclip.eval.registry import DEFAULT_METHOD
from semclip.eval.runner import EvalResult
from semclip.eval.scoring import RunResult

RECORD_METRICS = ("iauroc", "pauroc", "f1max_px", "accuracy", "precision", "recall", "f1")
SEGMENTATION = ("iauroc", "pauroc", "f1max_px")
CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
ABLATIONS = (
    "semclip-no-transform",
    "semclip-generic-prompts",
    "semclip-no-pclip",
    "semclip-no-head",
    "semclip-last-stage",
    "semclip-no-membank",
    "semclip-no-selfsim",
    "semclip-global-alpha",
    "semclip",
)
BASELINES = ("clip-zero", "winclip-zero", "winclip-few", "patchcore", "semclip")


def _run_key(run: Any, result: EvalResult, *, with_backbone: bool = True) -> dict[str, Any]:
    """The fields that identify a run in every JSON output: method, shots, seed (+ backbone)."""
    key = {"method": run.method, "shots": run.shots, "seed": run.seed}
    if with_backbone:
        key.update(backbone=result.backbone["name"], pretrained=result.backbone["pretrained"])
    return key


def records(result: EvalResult) -> list[dict[str, Any]]:
    """metrics.json: one record per method × k × seed."""
    return [
        {
            **_run_key(run, result),
            "random_weights": result.backbone["random_weights"],
            **{key: run.metrics[key] for key in RECORD_METRICS},
            "iauroc_max_s": run.metrics["iauroc_max_s"],
            "n_support": run.n_support,
            "n_test": run.n_test,
            # transductive: data set images in the backbone's unlabelled adaptation set
            "transductive_images": (result.transductive or {}).get("seen"),
        }
        for run in result.runs
    ]


def class_records(result: EvalResult) -> list[dict[str, Any]]:
    """per_class.json: the same figures per class (segmentation of a class: its images + good)."""
    return [
        {
            **_run_key(run, result),
            "class": label,
            **values,
        }
        for run in result.runs
        for label, values in run.per_class.items()
    ]


def confusion_records(result: EvalResult) -> list[dict[str, Any]]:
    """confusion.json: the (K, K) matrix of every run with a classifier (rows = true class)."""
    return [
        {
            **_run_key(run, result, with_backbone=False),
            "labels": list(result.classes),
            "matrix": run.confusion,
        }
        for run in result.runs
        if run.confusion is not None
    ]


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, plots: bool = True) -> Path:
    """Write every output into `out_dir` (created); returns the report.md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _dump(out / "metrics.json", records(result))
    _dump(out / "per_class.json", class_records(result))
    _dump(out / "confusion.json", confusion_records(result))
    _dump(out / "fit_config.json", result.config.fit_config.to_dict())
    figures: list[tuple[str, str]] = []
    if plots:
        from semclip.eval.plots import write_plots

        figures = write_plots(result, out)
    path = out / "report.md"
    path.write_text(markdown(result, figures))
    return path


def fit_changes(config: FitConfig) -> str:
    """'; changed from the defaults: k=v, …' for fields an override set ('' when none).

    A report of a re-measured default must say which default it changed; seed and augment
    are protocol choices shown elsewhere.
    """
    base = FitConfig(augment=config.augment, seed=config.seed)
    changed = [
        f"{name}={value}"
        for name, value in config.to_dict().items()
        if value != getattr(base, name)
    ]
    return f"; changed from the defaults: {', '.join(changed)}" if changed else ""


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------ Markdown
def weights_banner(backbone: dict[str, Any]) -> str:
    """The first line of every report: backbone and, loudly, pretrained or RANDOM weights."""
    if backbone["random_weights"]:
        return (
            f"> **Backbone `{backbone['name']}` — RANDOM WEIGHTS (not pretrained).** Every "
            "number below is a plumbing check of the evaluation, not a quality figure."
        )
    weights = backbone["pretrained"] or "weights from the model folder"
    return f"> **Backbone `{backbone['name']}` — pretrained weights: `{weights}`.**"


def cell(values: Iterable[float | None]) -> str:
    """Mean ± std over seeds in percent ('–' when every value is null)."""
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    mean = 100 * float(np.mean(got))
    if len(got) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * float(np.std(got, ddof=1)):.1f}"


def _runs(result: EvalResult, method: str, shots: int) -> list[RunResult]:
    return [r for r in result.runs if r.method == method and r.shots == shots]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def ordered_methods(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """The distinct method names, those listed in `order` first (in its order), then the rest."""
    present = list(dict.fromkeys(names))
    first = [m for m in order if m in present]
    return first + [m for m in present if m not in first]


def _methods(result: EvalResult, order: Sequence[str]) -> list[str]:
    return ordered_methods((r.method for r in result.runs), order)


def segmentation_table(result: EvalResult, metrics: Sequence[str] = SEGMENTATION) -> list[str]:
    """Table 1: a row per method, a column per k, cells 'a / b / c'."""
    shots = result.plan.shots
    rows = []
    for method in _methods(result, BASELINES):
        cells = []
        for k in shots:
            runs = _runs(result, method, k)
            cells.append(" / ".join(cell(r.metrics[m] for r in runs) for m in metrics))
        rows.append([f"`{method}`", *cells])
    return _table(["Method", *(f"{k}-shot" for k in shots)], rows)


def classification_table(result: EvalResult, k: int) -> list[str]:
    """Table 2 at one k: accuracy, macro precision, recall, F1."""
    rows = []
    for method in _methods(result, BASELINES):
        runs = _runs(result, method, k)
        rows.append([f"`{method}`", *(cell(r.metrics[m] for r in runs) for m in CLASSIFICATION)])
    return _table(["Method", "Accuracy", "Precision", "Recall", "F1"], rows)


def ablation_table(result: EvalResult, k: int) -> list[str]:
    """Table 3 at one k: every metric for the ablations and SEM-CLIP."""
    rows = []
    for method in [m for m in _methods(result, ABLATIONS) if m in ABLATIONS]:
        runs = _runs(result, method, k)
        rows.append([f"`{method}`", *(cell(r.metrics[m] for r in runs) for m in RECORD_METRICS)])
    header = ["Method", "iAUROC", "pAUROC", "F1-max", "Acc.", "Prec.", "Recall", "F1"]
    return _table(header, rows)


def per_class_table(result: EvalResult, method: str, k: int) -> list[str]:
    runs = _runs(result, method, k)
    keys = ("iauroc", "pauroc", "f1max_px", "precision", "recall", "f1")
    rows = []
    for label in result.classes:
        n = runs[0].per_class[label]["n_test"] if runs else 0
        values = [cell(r.per_class[label][key] for r in runs) for key in keys]
        rows.append([f"`{label}`", str(n), *values])
    header = ["Class", "test images", "iAUROC", "pAUROC", "F1-max", "Prec.", "Recall", "F1"]
    return _table(header, rows)


def markdown(result: EvalResult, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The whole report.md."""
    lines = ["# semclip evaluation", "", weights_banner(result.backbone), ""]
    lines += _facts(result)
    shots = result.plan.shots
    if not shots:
        lines += ["", "**No k could be evaluated** (see the skipped lines above)."]
        return "\n".join(lines) + "\n"
    big = max(shots)
    lines += ["", "## Table 1 — segmentation: iAUROC / pAUROC / pixel F1-max (%)", ""]
    lines += ["iAUROC from the method's image score (SEM-CLIP: 1 − P(good) of the fused"]
    lines += ["classifier). Mean ± std over seeds; `–`: the method cannot produce it.", ""]
    lines += segmentation_table(result)
    lines += ["", "### iAUROC from max S (%)", ""]
    lines += segmentation_table(result, ("iauroc_max_s",))
    for k in shots:
        lines += ["", f"## Table 2 — classification, {k}-shot (%)", ""]
        lines += classification_table(result, k)
    if any(r.method in ABLATIONS[:-1] for r in result.runs):
        lines += ["", f"## Table 3 — ablations, {big}-shot (%)", ""]
        lines += ablation_table(result, big)
    method = DEFAULT_METHOD if any(r.method == DEFAULT_METHOD for r in result.runs) else None
    method = method or result.runs[0].method
    lines += ["", f"## Per class: `{method}`, {big}-shot (%)", ""]
    lines += ["Segmentation of a class: its test images and the good ones.", ""]
    lines += per_class_table(result, method, big)
    lines += ["", "## Methods", ""]
    lines += [f"- `{name}`: {text}" for name, text in result.descriptions.items()]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for name, title in figures]
    return "\n".join(lines) + "\n"


def _facts(result: EvalResult) -> list[str]:
    """Backbone, data, protocol, cache and pixel-metric facts; skipped k lines."""
    enc, cfg = result.encoded, result.config
    counts = {c: sum(s.label == c for s in enc.samples) for c in result.classes}
    grouped = any(s.group is not None for s in enc.samples)
    runs = result.runs
    exact = all(r.pixel_exact for r in runs)
    bound = max((r.pixel_auroc_error or 0.0 for r in runs), default=0.0)
    lines = [
        f"- Backbone: {result.backbone['describe']}",
        f"- Data: `{result.data_root}`: {len(enc)} images "
        + ", ".join(f"{c} {n}" for c, n in counts.items())
        + (" (k counts groups: `group` column)" if grouped else ""),
        f"- Databar crop: top {cfg.databar.top}, bottom {cfg.databar.bottom} rows",
        f"- Protocol: k = {', '.join(map(str, cfg.shots))} per class (good included), "
        f"seeds 0..{cfg.seeds - 1}; the rest of each draw is the test set",
        f"- Fit: augment={cfg.fit_config.augment}, steps {cfg.fit_config.min_steps}-"
        f"{cfg.fit_config.max_steps}, CV folds {cfg.fit_config.cv_folds}"
        + fit_changes(cfg.fit_config),
        f"- Feature cache `{result.cache['folder']}`: {result.cache['hits']} hits, "
        f"{result.cache['misses']} misses (backbone passes, image × augmentation)",
        "- Pixel metrics over all pixels of the test images at original resolution: "
        + ("exact" if exact else f"{HISTOGRAM_BINS:,}-bin histogram (AUROC error ≤ {bound:.1e})"),
        f"- Wall time {result.seconds:.1f} s",
    ]
    lines += [f"- Skipped: {line}" for line in result.plan.skipped]
    if enc.unreadable:
        lines.append(f"- {left_out_heading(len(enc.unreadable))}:")
        lines += [f"  - {line}" for line in enc.unreadable]
    lines += [f"- {note}" for note in result.notes]
    return lines
