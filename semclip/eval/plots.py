"""Figures of an evaluation: ROC curves, confusion matrices, test images with mask overlays.

Matplotlib's Agg backend is used explicitly, so reports render on headless workers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from semclip.data.images import read_image  # noqa: E402
from semclip.eval.pixels import full_resolution  # noqa: E402
from semclip.eval.runner import EvalResult  # noqa: E402
from semclip.eval.scoring import RunResult  # noqa: E402

Figure = tuple[str, str]  # (file name, title)

RANDOM_BANNER = "RANDOM-WEIGHT BACKBONE: a plumbing check, not quality figures"
BANNER_RGB = (0.8, 0.0, 0.0)  # a red bar across the top: seen before any number is read


def _save(fig: plt.Figure, path: Path, random_weights: bool) -> None:
    """Lay out and write ``fig``; a random-weight backbone's figure gets the banner on top,
    so a plot copied out of its report still says what it is."""
    if random_weights:
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        fig.text(
            0.5,
            0.995,
            RANDOM_BANNER,
            ha="center",
            va="top",
            fontsize=10,
            fontweight="bold",
            color="white",
            bbox={"facecolor": BANNER_RGB, "edgecolor": "none", "pad": 4},
        )
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(result: EvalResult, out: Path) -> list[Figure]:
    """Every figure of the report, written into `out`; returns (file, title) pairs."""
    figures: list[Figure] = []
    random_weights = bool(result.backbone.get("random_weights"))
    seed0 = min((r.seed for r in result.runs), default=0)
    for k in result.plan.shots:
        runs = [r for r in result.runs if r.shots == k and r.seed == seed0]
        name = f"roc_k{k}.png"
        plot_roc(runs, f"ROC curves, {k}-shot, seed {seed0}", out / name, random_weights)
        figures.append((name, f"ROC curves, {k}-shot (seed {seed0})"))
    if result.plan.shots:
        k = max(result.plan.shots)
        panels = []
        for method in dict.fromkeys(r.method for r in result.runs):
            runs = [r for r in result.runs if r.method == method and r.shots == k]
            if runs and runs[0].confusion is not None:
                panels.append((method, np.sum([r.confusion for r in runs], axis=0)))
        if panels:
            name = f"confusion_k{k}.png"
            title = f"Confusion matrices, {k}-shot, summed over seeds (rows: true class)"
            plot_confusions(panels, result.classes, title, out / name, random_weights)
            figures.append((name, title))
    showcase = _showcase_run(result)
    if showcase is not None and showcase.examples:
        name = "examples.png"
        plot_examples(result, showcase, out / name, random_weights)
        title = f"Test images: {showcase.method}, {showcase.shots}-shot, seed {showcase.seed}"
        figures.append((name, title))
    return figures


def _showcase_run(result: EvalResult) -> RunResult | None:
    if result.showcase is None:
        return None
    method, k, seed = result.showcase
    return next((r for r in result.runs if (r.method, r.shots, r.seed) == (method, k, seed)), None)


def plot_roc(runs: list[RunResult], title: str, path: Path, random_weights: bool = False) -> None:
    """Image-level and pixel-level ROC curves, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, attr, key, what in (
        (axes[0], "image_roc", "iauroc", "image (defect vs good)"),
        (axes[1], "pixel_roc", "pauroc", "pixel"),
    ):
        for run in runs:
            curve = getattr(run, attr)
            if curve is not None:
                value = run.metrics[key]
                label = f"{run.method} ({100 * value:.1f})" if value is not None else run.method
                style = "--" if run.method.startswith("semclip-") else "-"
                ax.plot(curve[0], curve[1], style, label=label, linewidth=1.3)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=what)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    _save(fig, path, random_weights)


def plot_confusions(
    panels: list[tuple[str, np.ndarray]],
    labels: tuple[str, ...],
    title: str,
    path: Path,
    random_weights: bool = False,
) -> None:
    """One panel per method: counts, coloured by the fraction of the true class (recall)."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    side = 1.2 + 0.55 * len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1, side * rows), squeeze=False)
    for ax, (method, matrix) in zip(axes.flat, panels, strict=False):
        confusion_panel(ax, np.asarray(matrix), labels, method)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(title)
    _save(fig, path, random_weights)


def confusion_panel(ax: plt.Axes, matrix: np.ndarray, labels: tuple[str, ...], title: str) -> None:
    """Counts with row-normalised colour, as the paper's Figure 7."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour, fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_examples(
    result: EvalResult, run: RunResult, path: Path, random_weights: bool = False
) -> None:
    """Columns of test images: ground truth (green), predicted mask S > τ (red), the map S."""
    enc = result.encoded
    n = len(run.examples)
    fig, axes = plt.subplots(3, n, figsize=(2.1 * n, 6.6), squeeze=False)
    for j, ex in enumerate(run.examples):
        pixels = read_image(enc.samples[ex.row].image).pixels
        score = full_resolution(
            ex.score_map.astype(np.float32), enc.shapes[ex.row], result.config.databar
        )
        gt = enc.gt_mask(ex.row)
        axes[0, j].imshow(pixels, cmap="gray", vmin=0, vmax=1)
        if gt is not None and gt.any():
            axes[0, j].contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        axes[0, j].set_title(f"{ex.label}", fontsize=8)
        axes[1, j].imshow(pixels, cmap="gray", vmin=0, vmax=1)
        if run.tau is not None:
            pred = score > run.tau
            overlay = np.zeros((*pred.shape, 4))
            overlay[pred] = (1.0, 0.1, 0.1, 0.45)
            axes[1, j].imshow(overlay)
        axes[1, j].set_title(f"pred: {ex.predicted or '–'}", fontsize=8)
        axes[2, j].imshow(score, cmap="inferno", vmin=0, vmax=1)
        axes[2, j].set_title(f"max S {score.max():.2f}", fontsize=8)
        for ax in axes[:, j]:
            ax.set_axis_off()
    tau = f"τ = {run.tau:.3f}" if run.tau is not None else "no τ (uncalibrated method)"
    fig.suptitle(
        f"{run.method}, {run.shots}-shot, seed {run.seed}: ground truth (green), "
        f"predicted mask S > τ (red), map S; {tau}",
        fontsize=9,
    )
    _save(fig, path, random_weights)
