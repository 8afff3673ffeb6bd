"""The sub-commands of `semclip`: name → (module, one-line summary).

Light on purpose: `semclip --help` lists the commands from this table without importing any of
their modules (each pulls in torch and open_clip, seconds of import), and `semclip CMD` imports
only CMD's module. Each module's `register(subparsers)` adds its parser with `summary(name)`.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("semclip.cli.fit_cmd", "fit a model on k shots per class"),
    "predict": ("semclip.cli.predict_cmd", "predict images with a fitted model"),
    "synth": ("semclip.cli.synth_cmd", "generate a synthetic SEM defect data set"),
    "demo": ("semclip.cli.demo_cmd", "run the main job on embedded defaults"),
    "eval": (
        "semclip.cli.eval_cmd",
        "few-shot evaluation (paper protocol): metrics.json, report.md, plots",
    ),
    "eval-al": (
        "semclip.cli.eval_al_cmd",
        "active learning measured: review picks vs random picks, same budget",
    ),
    "compare": (
        "semclip.cli.compare_cmd",
        "several evaluations side by side, one column per backbone",
    ),
    "bench": (
        "semclip.cli.bench_cmd",
        "throughput and peak memory: encoder, dual path, predict, fine-tuning",
    ),
    "pretrain": (
        "semclip.cli.pretrain_cmd",
        "pretrain a CLIP backbone on SEM images (offline recipe by default)",
    ),
    "convert": (
        "semclip.cli.convert_cmd",
        "convert a local copy of a public defect set (NEU-Seg) into a manifest folder",
    ),
    "export": (
        "semclip.cli.export_cmd",
        "export a fitted model (encoder + heads) to ONNX, checked against eager",
    ),
    "review": (
        "semclip.cli.review_cmd",
        "review loop: export rows that need review, import engineers' decisions",
    ),
    "promote": (
        "semclip.cli.promote_cmd",
        "point the champion alias at a registered model version",
    ),
    "report": (
        "semclip.cli.report_cmd",
        "yield report of a date or range: Pareto, counts, wafer maps, trend, review share",
    ),
    "klarf-export": (
        "semclip.cli.klarf_export_cmd",
        "write each input KLARF of a date to klarf_out/<date>/ with the predicted classes",
    ),
}


def summary(name: str) -> str:
    """The one-line help of sub-command `name`, shown by `semclip --help`."""
    return COMMANDS[name][1]


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (first non-option word), if any."""
    return next((word for word in argv if not word.startswith("-")), None)
