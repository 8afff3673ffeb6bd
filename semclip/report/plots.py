"""The report's charts as PNG bytes: Pareto bars, wafer maps and the density trend.

matplotlib with the Agg backend (no display on a worker), one figure per call, closed before
returning, so a report of many wafers does not pile figures up. Classes keep one colour across
every chart of a report (:func:`class_colours`). A random-weight backbone's charts carry the
banner in their title: a PNG copied out of the report must not pass for a quality figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["RANDOM_BANNER", "class_colours", "pareto_png", "trend_png", "wafer_map_png"]

RANDOM_BANNER = "RANDOM-WEIGHT BACKBONE: plumbing check, not quality figures"
_DPI = 80


def class_colours(classes: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per class name (sorted, tab10 then tab20), the same in every chart."""
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(sorted(set(classes)))}


def pareto_png(
    rows: Sequence[Mapping[str, Any]], title: str, colours: Mapping[str, Any], *, random: bool
) -> bytes:
    """Bars of ``n`` per class (largest first) with the cumulative share line on a 2nd axis."""
    names = [r["predicted_class"] for r in rows]
    counts = [r["n"] for r in rows]
    cumulative = [100 * r["cumulative_share"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(names, counts, color=[colours.get(n, "grey") for n in names])
    ax.set_ylabel("defects")
    ax.tick_params(axis="x", labelrotation=30)
    line = ax.twinx()
    line.plot(names, cumulative, color="black", marker="o", linewidth=1)
    line.set_ylim(0, 105)
    line.set_ylabel("cumulative %")
    return _png(fig, title, random)


def wafer_map_png(
    points: Sequence[Mapping[str, Any]], title: str, colours: Mapping[str, Any], *, random: bool
) -> bytes:
    """Defects at ``(die_x, die_y)`` in die units (index + XREL/DiePitch), coloured by class.

    Die boundaries are grid lines at integers; without a DiePitch a defect sits at its die's
    centre (the macro ``wafer_map_points`` says so with ``die_pitch_x_um`` null).
    """
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for name in sorted({p["predicted_class"] for p in points}):
        mine = [p for p in points if p["predicted_class"] == name]
        ax.scatter(
            [p["die_x"] for p in mine],
            [p["die_y"] for p in mine],
            s=28,
            color=colours.get(name, "grey"),
            label=f"{name} ({len(mine)})",
            edgecolors="black",
            linewidths=0.4,
        )
    xs = [p["die_x_index"] for p in points]
    ys = [p["die_y_index"] for p in points]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 1.5)
    ax.set_ylim(min(ys) - 0.5, max(ys) + 1.5)
    ax.set_xticks(range(min(xs), max(xs) + 2))
    ax.set_yticks(range(min(ys), max(ys) + 2))
    ax.grid(True, linewidth=0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("die column (XINDEX + XREL/DiePitch)")
    ax.set_ylabel("die row (YINDEX + YREL/DiePitch)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, title, random)


def trend_png(
    rows: Sequence[Mapping[str, Any]], title: str, colours: Mapping[str, Any], *, random: bool
) -> bytes:
    """Defects per wafer per class, one line per class, one point per night with rows."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name in sorted({r["predicted_class"] for r in rows}):
        mine = sorted((r for r in rows if r["predicted_class"] == name), key=lambda r: r["date"])
        ax.plot(
            [r["date"] for r in mine],
            [r["defects_per_wafer"] for r in mine],
            marker="o",
            color=colours.get(name, "grey"),
            label=name,
        )
    ax.set_ylabel("defects per wafer")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, title, random)


def _png(fig: Figure, title: str, random: bool) -> bytes:
    fig.suptitle(
        f"{RANDOM_BANNER}\n{title}" if random else title,
        fontsize=9,
        color="red" if random else "black",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
