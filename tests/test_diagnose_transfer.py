"""benchmarks/diagnose_transfer.py: the localisation-versus-naming diagnostic runs and is sane."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semclip.data import Dataset
from semclip.data.databar import DatabarCrop
from semclip.feature_cache import FeatureCache
from semclip.model import SemclipModel

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_transfer.py"


@pytest.fixture(scope="module")
def diagnose():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("diagnose_transfer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_region_is_the_blob_around_the_maximum_only(diagnose) -> None:  # type: ignore[no-untyped-def]
    score = np.zeros((32, 32))
    score[4:8, 4:8] = 1.0  # the peak
    score[20:26, 20:26] = 0.9  # as high, but not connected to it
    region = diagnose.peak_region(score)
    assert region[5, 5] and region.sum() == 16 and not region[22, 22]


def test_diagnose_split_measures_every_row_on_the_defect_images(  # type: ignore[no-untyped-def]
    diagnose, fitted_model: SemclipModel, support_split: tuple[Dataset, Dataset]
) -> None:
    support, test = support_split
    cache = FeatureCache(fitted_model.backbone, fitted_model.preprocess, 4, memory=True)
    measured = diagnose.diagnose_split(
        fitted_model, support, test, diagnose.Pixels(), cache, DatabarCrop()
    )
    assert tuple(measured) == diagnose.ROWS
    assert all(0.0 <= v <= 1.0 for v in measured.values())


def test_the_script_prints_a_table_per_k(synth_dir: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            str(synth_dir),
            "--backbone",
            "semclip-tiny",
            "--shots",
            "1",
            "--seeds",
            "2",
            "--fit",
            "augment=false",
            "--fit",
            "min_steps=20",
            "--fit",
            "max_steps=20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "1-shot seed 0:" in out and "1-shot seed 1:" in out
    for row in ("semclip", "region hits", "descriptors, true region"):
        assert f"| {row} |" in out
