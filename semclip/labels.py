"""Class labels as people type them → one spelling per class.

An engineer's ``" Particle"`` beside ``particle`` is one class, not two: a second spelling
would split the class's shots, give it two text prototypes and two heads' worth of classes.
Both label sources (a data set's ``manifest.csv`` and the pipeline's ``confirmed/`` rows)
pass every label through :func:`normalise_label`.

The rule: surrounding whitespace (and any leading or trailing separator) is stripped, case
is folded (``str.casefold``, so ``"GOOD"`` is the normal class ``good``), and every run of
spaces, tabs, hyphens and underscores inside becomes one ``_``: ``"Copper Residue"``,
``"copper-residue"`` and ``"copper__residue"`` are all ``copper_residue``, the spelling the
prompt file uses for its classes (and generic prompts read ``_`` as a space anyway).
Other characters
(digits, dots, non-ASCII letters) are kept as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LabelChange", "normalise_label"]

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_label(label: str) -> str:
    """The canonical spelling of ``label`` (see the module docstring); ``""`` stays ``""``."""
    return _SEPARATORS.sub("_", label.strip().casefold()).strip("_")


@dataclass(frozen=True)
class LabelChange:
    """A label that was written differently from its canonical spelling, and where."""

    written: str  # as in the file, e.g. " Particle"
    label: str  # what it now counts as, e.g. "particle"
    where: str  # file and row, e.g. "s3://fab/confirmed/week44.csv row 3"

    def __str__(self) -> str:
        return f"{self.where}: label {self.written!r} read as {self.label!r}"
