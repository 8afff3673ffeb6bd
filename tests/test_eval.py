"""`semclip eval`: protocol draws, metrics.json schema, per-method nulls, cache reuse, report.

The tiny backbone has random weights, so every figure here is a plumbing check: the tests assert
structure, ranges and bookkeeping, never quality.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from semclip import Backbone, FitConfig
from semclip.cli import main
from semclip.data import DatabarCrop, Dataset, Sample, load_dataset
from semclip.eval import (
    ORDER,
    EvalConfig,
    EvalResult,
    plan_splits,
    resolve_methods,
    run_evaluation,
    write_report,
)
from semclip.eval.pixels import PixelPool, full_resolution
from semclip.eval.report import RECORD_METRICS, class_records, records
from semclip.model import ImageScores
from semclip.synth import generate_dataset

COUNTS = {"good": 5, "bridge": 3, "particle": 3}
FAST = FitConfig(min_steps=6, max_steps=6, cv_folds=2)  # augmented: 8 entries per shot
BASELINES_WITHOUT_CLASSIFIER = {"winclip-zero", "winclip-few"}


def _rewrite_manifest(folder: Path, *, group: bool, masks: bool) -> None:
    """Drop the group column and/or the masks of a synthetic manifest, in place."""
    path = folder / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    with path.open("w", newline="") as fh:
        columns = ["image", "label", "mask", *(["group"] if group else [])]
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "mask": row["mask"] if masks else ""})


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """11 images of 3 classes, 96 px, no group column (so k = 2 keeps a test image per class)."""
    out = generate_dataset(tmp_path_factory.mktemp("eval") / "data", counts=COUNTS, seed=5, size=96)
    _rewrite_manifest(out, group=False, masks=True)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def result(eval_dir: Path, tiny_backbone: Backbone, cache_dir: Path) -> EvalResult:
    config = EvalConfig(
        shots=(1, 2, 3),
        seeds=2,
        methods=tuple(ORDER),
        fit_config=FAST,
        databar=DatabarCrop(bottom=8),
    )
    return run_evaluation(load_dataset(eval_dir), tiny_backbone, config, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- protocol
def _grouped_dataset() -> Dataset:
    """good: 3 groups of 2 images; bridge: 2 groups (one of 2 images, one of 1)."""
    layout = [("good", "g0"), ("good", "g0"), ("good", "g1"), ("good", "g1"), ("good", "g2")]
    layout += [("good", "g2"), ("bridge", "b0"), ("bridge", "b0"), ("bridge", "b1")]
    samples = tuple(
        Sample(Path(f"/x/{i}.png"), label, None, group, i + 1)
        for i, (label, group) in enumerate(layout)
    )
    return Dataset(Path("/x"), samples)


def test_protocol_is_group_aware_and_skips_k_with_a_line() -> None:
    dataset = _grouped_dataset()
    plan = plan_splits(dataset, [1, 2], range(3))
    assert plan.shots == (1,)
    assert len(plan.skipped) == 1 and plan.skipped[0].startswith("2-shot skipped")
    assert "'bridge'" in plan.skipped[0]
    for split in plan.splits:
        assert sorted(s.label for s in split.support.samples) == ["bridge", "good"]
        support_groups = {s.group for s in split.support.samples}
        assert not support_groups & {s.group for s in split.test.samples}  # no straddling
        kept = len(split.support) + len(split.test)
        drawn = sum(s.group in support_groups for s in dataset.samples)
        assert kept == len(dataset) - drawn + len(split.support)
    again = plan_splits(dataset, [1], range(3))
    assert [s.support for s in again.splits] == [s.support for s in plan.splits]


def test_protocol_rejects_data_without_good() -> None:
    dataset = Dataset(Path("/x"), (Sample(Path("/x/a.png"), "bridge", None, None, 1),))
    with pytest.raises(ValueError, match="'good'"):
        plan_splits(dataset, [1], [0])


def test_resolve_methods() -> None:
    assert resolve_methods("all") == ORDER
    assert resolve_methods("patchcore,semclip") == ("semclip", "patchcore")
    with pytest.raises(ValueError, match="choose from"):
        resolve_methods("semclip,nope")


# ------------------------------------------------------------------------------ metrics
@pytest.mark.slow
def test_metrics_json_schema_and_ranges(result: EvalResult) -> None:
    recs = records(result)
    assert result.plan.shots == (1, 2)
    assert any(line.startswith("3-shot skipped") for line in result.plan.skipped)
    assert len(recs) == len(ORDER) * 2 * 2  # methods × k × seeds
    keys = {"method", "shots", "seed", "backbone", "pretrained", *RECORD_METRICS}
    assert {(r["method"], r["shots"], r["seed"]) for r in recs} == {
        (m, k, s) for m in ORDER for k in (1, 2) for s in (0, 1)
    }
    for rec in recs:
        assert keys <= rec.keys()
        assert rec["backbone"] == "semclip-tiny" and rec["pretrained"] is None
        assert rec["random_weights"] is True
        for key in (*RECORD_METRICS, "iauroc_max_s"):
            value = rec[key]
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (key, rec)
        assert rec["n_support"] == 3 * rec["shots"]
        assert rec["n_test"] == 11 - rec["n_support"]


@pytest.mark.slow
def test_nulls_only_where_a_method_cannot_produce_a_metric(result: EvalResult) -> None:
    for rec in records(result):
        for key in ("iauroc", "iauroc_max_s", "pauroc", "f1max_px"):
            assert rec[key] is not None, (rec["method"], key)
        nulls = {rec[key] is None for key in ("accuracy", "precision", "recall", "f1")}
        assert nulls == {rec["method"] in BASELINES_WITHOUT_CLASSIFIER}, rec["method"]


@pytest.mark.slow
def test_per_class_rows(result: EvalResult) -> None:
    rows = class_records(result)
    assert len(rows) == len(result.runs) * 3
    for row in rows:
        if row["class"] == "good":
            assert row["iauroc"] is None and row["pauroc"] is None
        else:
            assert 0.0 <= row["pauroc"] <= 1.0
        if row["method"] == "semclip":
            assert row["f1"] is not None and row["n_test"] >= 1
    run = next(r for r in result.runs if r.method == "semclip")
    assert np.asarray(run.confusion).sum() == run.n_test


@pytest.mark.slow
def test_backbone_runs_once_per_image_and_augmentation(
    result: EvalResult, eval_dir: Path, tiny_backbone: Backbone, cache_dir: Path
) -> None:
    distinct_shots = {s for split in result.plan.splits for s in split.support.samples}
    n_images = sum(COUNTS.values())
    assert result.cache["misses"] == n_images + 7 * len(distinct_shots)  # 7 flips beyond aug 0
    assert result.cache["hits"] > 0
    again = run_evaluation(
        load_dataset(eval_dir),
        tiny_backbone,
        EvalConfig(
            shots=(1,),
            seeds=1,
            methods=("semclip", "patchcore"),
            fit_config=FAST,
            databar=DatabarCrop(bottom=8),
        ),
        cache_dir=cache_dir,
    )
    assert again.cache["misses"] == 0  # every image and flip came from the disk cache


@pytest.mark.slow
def test_classification_only_data_gives_null_pixel_metrics(
    eval_dir: Path, tiny_backbone: Backbone, cache_dir: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(eval_dir, tmp_path / "no-masks"))
    _rewrite_manifest(folder, group=False, masks=False)
    config = EvalConfig(
        shots=(1,),
        seeds=1,
        methods=("semclip", "patchcore"),
        fit_config=FAST,
        databar=DatabarCrop(bottom=8),
    )
    got = run_evaluation(load_dataset(folder), tiny_backbone, config, cache_dir=cache_dir)
    for rec in records(got):
        assert rec["pauroc"] is None and rec["f1max_px"] is None
        assert rec["iauroc"] is not None and rec["accuracy"] is not None


# ------------------------------------------------------------------------------- report
@pytest.mark.slow
def test_report_files_state_random_weights(result: EvalResult, tmp_path: Path) -> None:
    path = write_report(result, tmp_path / "report")
    text = path.read_text()
    assert "RANDOM WEIGHTS" in text and "semclip-tiny" in text
    assert "3-shot skipped" in text
    assert "Table 1" in text and "Table 2" in text and "Table 3" in text
    assert "misses" in text
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == records(result)
    for name in ("roc_k1.png", "roc_k2.png", "confusion_k2.png", "examples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
        assert f"]({name})" in text


# ------------------------------------------------------------------------------- pixels
def test_pixel_pool_exact_matches_sklearn_and_histogram_is_close() -> None:
    rng = np.random.default_rng(0)
    exact, hist = PixelPool(True), PixelPool(False)
    scores, labels = [], []
    for _ in range(4):
        y = rng.random((20, 30)) < 0.1
        s = np.clip(rng.normal(0.4 + 0.2 * y, 0.15), 0, 1).astype(np.float32)
        s[:2] = 0.5  # ties
        for pool in (exact, hist):
            pool.add(s, y)
        scores.append(s.ravel())
        labels.append(y.ravel())
    want = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    assert exact.auroc() == pytest.approx(want, abs=1e-12)
    assert abs(hist.auroc() - want) <= hist.auroc_error_bound() + 1e-12
    assert hist.f1_max() <= exact.f1_max() + 1e-12
    fpr, tpr = hist.roc()
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_full_resolution_is_the_production_resize() -> None:
    smap = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    databar = DatabarCrop(top=3, bottom=5)
    scores = ImageScores("x", None, (50, 40), *(np.zeros(2),) * 4, smap)
    np.testing.assert_allclose(
        full_resolution(smap, (50, 40), databar), scores.full_map(databar), rtol=1e-6
    )


# ---------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_eval_end_to_end(
    eval_dir: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli-report"
    code = main(
        ["eval", "--data", str(eval_dir), "--backbone", "semclip-tiny", "--method",
         "semclip,winclip-zero", "--shots", "1", "--seeds", "1", "--out", str(out),
         "--cache-dir", str(cache_dir), "--no-augment", "--fit", "surgery_scale=10"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "fit_config.json").read_text())["surgery_scale"] == 10.0
    assert "changed from the defaults: surgery_scale=10.0" in (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in printed and "misses" in printed
    rows = json.loads((out / "metrics.json").read_text())
    assert [(r["method"], r["shots"], r["seed"]) for r in rows] == [
        ("semclip", 1, 0),
        ("winclip-zero", 1, 0),
    ]
    rows_in_synth = json.loads((eval_dir / "synth.json").read_text())["databar_rows"]
    assert f"bottom {rows_in_synth} rows" in (out / "report.md").read_text()


def test_clip_zero_classifies_by_the_nearest_class_prompt() -> None:
    """CLIP zero-shot: image class from the image embedding, map from the V-V patches."""
    import torch

    from semclip.eval.baselines import ClipZeroScorer
    from semclip.features import Features

    text = torch.eye(3, 8)  # prototypes of good (0), bridge (1), particle (2)
    vv = torch.zeros(2, 4, 1 + 16, 8)
    vv[0, -1, 0] = text[1]  # image 0: a bridge image embedding
    vv[1, -1, 0] = text[0]  # image 1: good
    vv[:, -1, 1:] = text[0]  # every patch good ...
    vv[0, -1, 1:5] = text[2]  # ... except four defect patches of image 0
    scorer = ClipZeroScorer(text, good_index=0, size=32)
    out = scorer.score(Features(torch.zeros(2, 4, 17, 8), vv))
    assert out.probs is not None and out.probs.argmax(dim=1).tolist() == [1, 0]
    assert out.anomaly[0] > 0.99 > 0.01 > out.anomaly[1]
    assert out.score_map.shape == (2, 32, 32)
    assert out.score_map[0, :8].mean() > 0.5 > out.score_map[0, 24:].max()
    assert float(out.score_map[1].max()) < 0.01 and scorer.tau is None


@pytest.mark.slow
def test_compare_puts_backbones_side_by_side(result: EvalResult, tmp_path: Path) -> None:
    """Two backbones' folders (one split over two folders) → one column each, counted once."""
    from semclip.eval.compare import load_comparison, markdown
    from semclip.eval.report import cell

    first = write_report(result, tmp_path / "tiny", plots=False).parent
    shutil.copytree(first, tmp_path / "tiny-again")  # the same runs twice: merged, not doubled
    other = tmp_path / "pretrained"
    other.mkdir()
    for name in ("metrics.json", "per_class.json"):
        rows = json.loads((first / name).read_text())
        for row in rows:
            row.update(backbone="local-dir:/models/sem", pretrained=None, random_weights=False)
            if "iauroc" in row and row["iauroc"] is not None:
                row["iauroc"] = 0.9
        (other / name).write_text(json.dumps(rows))
    comparison = load_comparison([first, tmp_path / "tiny-again", other])
    assert [b.name for b in comparison.backbones] == ["semclip-tiny", "local-dir:/models/sem"]
    assert len(comparison.runs) == 2 * len(records(result))
    text = markdown(comparison, ["bridge"])
    assert "`semclip-tiny` (RANDOM)" in text and "RANDOM WEIGHTS" in text
    assert "## 1-shot" in text and "## 2-shot" in text and "## 3-shot" not in text
    semclip_k1 = [r for r in records(result) if r["method"] == "semclip" and r["shots"] == 1]
    expected = " / ".join(cell(r[m] for r in semclip_k1) for m in ("iauroc", "pauroc", "f1max_px"))
    row = next(line for line in text.splitlines() if line.startswith("| `semclip` |"))
    assert row.split(" | ")[1].startswith(expected)
    assert row.split(" | ")[2].startswith("90.0 ± 0.0 / ")
    assert "## Class `bridge`" in text
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_comparison([tmp_path / "nothing"])


@pytest.mark.slow
def test_compare_cli(result: EvalResult, tmp_path: Path) -> None:
    folder = write_report(result, tmp_path / "tiny", plots=False).parent
    assert main(["compare", str(folder), "--out", str(tmp_path / "c.md")]) == 0
    assert "`semclip-tiny` (RANDOM)" in (tmp_path / "c.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("random_weights", [True, False])
def test_plots_of_a_random_backbone_carry_the_banner(tmp_path: Path, random_weights: bool) -> None:
    """Issue 11: a figure copied out of a random-weight report still says what it is."""
    from PIL import Image

    from semclip.eval.plots import BANNER_RGB, plot_confusions

    path = tmp_path / "confusion.png"
    matrix = np.array([[3, 1], [0, 4]])
    plot_confusions([("m", matrix)], ("good", "bridge"), "t", path, random_weights)

    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top = pixels[: max(1, pixels.shape[0] // 12)]
    red = np.all(np.abs(top - np.array(BANNER_RGB) * 255) < 30, axis=-1)
    assert bool(red.mean() > 0.05) is random_weights, red.mean()


def test_alpha_ablations_override_the_class_aware_fusion() -> None:
    """-no-pclip / -no-head mean α = 0 / 1 for every class, even when the fit chose α_c.

    A model with a class CLIP cannot know stores α_c (0 for that class); the ablations must
    not inherit it, or they silently equal `semclip` (found on NEU-Seg, where no class is
    prompted and all three reported the same accuracy).
    """
    from types import SimpleNamespace

    import torch

    from semclip.config import Calibration
    from semclip.eval.methods import (
        semclip,
        semclip_global_alpha,
        semclip_no_head,
        semclip_no_pclip,
    )

    calibration = Calibration(alpha=0.3, class_alpha=(0.3, 0.3, 0.0))
    model = SimpleNamespace(
        heads=SimpleNamespace(n_stages=4), calibration=calibration, good_index=0, membank=None
    )
    ctx = SimpleNamespace(
        memo=lambda key, make: model,
        encoded=SimpleNamespace(feats=SimpleNamespace(tokens=torch.zeros(1, 4, 5, 8))),
        size=32,
    )
    split = SimpleNamespace(shots=2, seed=0)
    alphas = {
        fn.__name__: fn(ctx, split).calibration.alphas(3)  # type: ignore[arg-type]
        for fn in (semclip, semclip_no_pclip, semclip_no_head, semclip_global_alpha)
    }
    assert alphas == {
        "semclip": (0.3, 0.3, 0.0),
        "semclip_no_pclip": (0.0, 0.0, 0.0),
        "semclip_no_head": (1.0, 1.0, 1.0),
        "semclip_global_alpha": (0.3, 0.3, 0.3),
    }
