"""argparse types for numeric options: a bad value is refused by the parser, naming the option.

Light on purpose (argparse and math only): commands that answer without importing torch
(`semclip report`) use them too.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count: images, seeds, nights, pixels)."""
    return _bounded(text, int, 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (an index: a TIFF page)."""
    return _bounded(text, int, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a physical size: nm per pixel)."""
    value = _bounded(text, float, None, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a probability, a margin, a share)."""
    value = _bounded(text, float, 0.0, "a number in [0, 1]")
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return value


def _bounded(text: str, kind: type, low: float | None, words: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {words}") from None
    if not math.isfinite(value) or (low is not None and value < low):
        raise argparse.ArgumentTypeError(f"{text!r} is not {words}")
    return value


def version_number(text: str) -> str:
    """argparse type: a registered model version, ``3`` or ``v3`` → ``"3"`` (not an alias)."""
    digits = text.strip().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a version number (e.g. 3 or v3; aliases such as champion are "
            "not versions)"
        )
    return str(int(digits))
