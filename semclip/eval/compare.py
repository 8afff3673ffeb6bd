"""Side by side: the metrics of several `semclip eval` folders, one column per backbone.

The question after pretraining a backbone is "how much better than a random one, and than the
one pretrained without these classes?". Each evaluation writes its own report; this reads their
`metrics.json` (and `per_class.json`) and lays the same methods and k next to each other. Runs
of one backbone may be spread over several folders (one k per process, a method added later):
records are merged, and a (backbone, method, k, seed) seen twice counts once.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semclip.eval.registry import ORDER
from semclip.eval.report import SEGMENTATION, cell, ordered_methods

CLASSIFICATION = ("accuracy", "f1")  # the two of report.CLASSIFICATION a side-by-side cell fits


@dataclass(frozen=True)
class Backbone:
    """One column: an evaluated backbone, and whether its weights were random."""

    name: str
    pretrained: str | None
    random_weights: bool

    @property
    def label(self) -> str:
        return f"`{self.name}`" + (" (RANDOM)" if self.random_weights else "")


@dataclass(frozen=True)
class Comparison:
    """Merged records of several evaluation folders."""

    runs: tuple[dict[str, Any], ...]  # metrics.json records
    classes: tuple[dict[str, Any], ...]  # per_class.json records
    backbones: tuple[Backbone, ...]  # in the order first met
    folders: tuple[str, ...]


def load_comparison(folders: Sequence[str | os.PathLike]) -> Comparison:
    """Read and merge the evaluation folders; FileNotFoundError names one without metrics."""
    runs: dict[tuple, dict[str, Any]] = {}
    classes: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no metrics.json (not a `semclip eval` folder)")
        for record in json.loads(path.read_text()):
            runs.setdefault(_key(record), record)
        per_class = Path(folder) / "per_class.json"
        if per_class.is_file():
            for record in json.loads(per_class.read_text()):
                classes.setdefault((*_key(record), record["class"]), record)
    if not runs:
        raise ValueError(f"no evaluation records in {', '.join(map(str, folders))}")
    backbones = tuple(
        dict.fromkeys(
            Backbone(r["backbone"], r.get("pretrained"), bool(r.get("random_weights")))
            for r in runs.values()
        )
    )
    return Comparison(
        tuple(runs.values()), tuple(classes.values()), backbones, tuple(map(str, folders))
    )


def markdown(comparison: Comparison, classes: Sequence[str] = ()) -> str:
    """The comparison report: one table per k (methods × backbones), then the chosen classes."""
    shots = sorted({r["shots"] for r in comparison.runs})
    lines = ["# semclip evaluation, side by side", ""]
    for b in comparison.backbones:
        weights = (
            "RANDOM WEIGHTS: a plumbing check, not quality"
            if b.random_weights
            else (f"pretrained ({b.pretrained or 'weights from the model folder'})")
        )
        lines.append(f"- {b.label}: {weights}")
    lines += [f"- From: {', '.join(f'`{f}`' for f in comparison.folders)}", ""]
    lines += [
        "Cells: iAUROC / pAUROC / pixel F1-max, then accuracy / macro F1 where the method",
        "classifies (%, mean ± std over seeds; `–`: not produced or not run).",
    ]
    for k in shots:
        lines += ["", f"## {k}-shot", ""]
        lines += _table(comparison, comparison.runs, k, _methods(comparison.runs))
    for name in classes:
        rows = [r for r in comparison.classes if r["class"] == name]
        lines += ["", f"## Class `{name}`: per-class iAUROC / pAUROC / F1-max; recall / F1", ""]
        if not rows:
            lines.append(f"No per-class records for `{name}`.")
            continue
        for k in shots:
            lines += [f"**{k}-shot**", ""]
            lines += _table(comparison, rows, k, _methods(rows), ("recall", "f1"))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(
    folders: Sequence[str | os.PathLike], out: str | os.PathLike, classes: Sequence[str] = ()
) -> Path:
    """Write the side-by-side Markdown to `out` and return its path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(load_comparison(folders), classes))
    return path


def _key(record: dict[str, Any]) -> tuple:
    return (
        record["backbone"],
        record.get("pretrained"),
        record["method"],
        record["shots"],
        record["seed"],
    )


def _methods(records: Iterable[dict[str, Any]]) -> list[str]:
    return ordered_methods((r["method"] for r in records), ORDER)


def _table(
    comparison: Comparison,
    records: Iterable[dict[str, Any]],
    k: int,
    methods: Sequence[str],
    second: Sequence[str] = CLASSIFICATION,
) -> list[str]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["shots"] == k:
            groups[(r["backbone"], r.get("pretrained"), r["method"])].append(r)
    header = ["Method", *(b.label for b in comparison.backbones)]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = []
        for b in comparison.backbones:
            runs = groups.get((b.name, b.pretrained, method), [])
            if not runs:
                cells.append("–")
                continue
            text = " / ".join(cell(r.get(m) for r in runs) for m in SEGMENTATION)
            extra = " / ".join(cell(r.get(m) for r in runs) for m in second)
            cells.append(text if extra == " / ".join("–" for _ in second) else f"{text}; {extra}")
        out.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return out
