"""Synthetic SEM defect review images with pixel masks, for tests, demos and benchmarks.

No public SEM defect data set exists, so this package draws patterned wafer backgrounds, adds one
of six defect types, images the scene with SEM artefacts and burns in a databar, each in one of
several named tool styles (:mod:`semclip.synth.styles`; one is held out of pretraining).
Everything is seeded: an image depends only on (seed, label, index).
"""

from __future__ import annotations

from semclip.synth.dataset import (
    DEFAULT_COUNTS,
    LABELS,
    SynthSample,
    generate_dataset,
    render_sample,
    sample_rng,
)
from semclip.synth.defects import DEFECTS
from semclip.synth.patterns import PATTERNS
from semclip.synth.styles import DEFAULT_STYLES, HELDOUT_STYLES, STYLES, Style

__all__ = [
    "DEFAULT_COUNTS",
    "DEFAULT_STYLES",
    "DEFECTS",
    "HELDOUT_STYLES",
    "LABELS",
    "PATTERNS",
    "STYLES",
    "Style",
    "SynthSample",
    "generate_dataset",
    "render_sample",
    "sample_rng",
]
