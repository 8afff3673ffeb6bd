"""`semclip export --onnx`: the file agrees with eager fp32 within 1e-4, and eager is production."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semclip import SemclipModel
from semclip.artifact import save_model
from semclip.cli import main
from semclip.features import surgery_maps
from semclip.inference import patch_clip_map, run_heads
from semclip.region_head import THUMB, RegionHead, fuse_region, region_features, thumbnail
from semclip.selfsim import anomaly, self_similarity

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semclip.export import (  # noqa: E402
    OUTPUT_NAMES,
    ExportedSemclip,
    check_and_time,
    export_onnx,
    membank_anomaly,
    onnx_session,
)


@pytest.fixture(scope="module")
def banked(fitted_model: SemclipModel) -> SemclipModel:
    """The fitted model with the memory bank (β = 0.4) and self-similarity (γ = 0.25) weighted
    in, so the map uses both; without its region head (see `regioned`)."""
    assert fitted_model.membank is not None
    calibration = replace(
        fitted_model.calibration, membank_weight=0.4, selfsim_weight=0.25, region_weight=0.0
    )
    return replace(fitted_model, calibration=calibration)


@pytest.fixture(scope="module")
def regioned(banked: SemclipModel) -> SemclipModel:
    """`banked` with its region head weighted in (w = 2)."""
    assert banked.calibration.region_head is not None
    return replace(banked, calibration=replace(banked.calibration, region_weight=2.0))


@pytest.fixture(scope="module")
def onnx_file(banked: SemclipModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(banked, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _images(model: SemclipModel, n: int, seed: int = 0) -> torch.Tensor:
    size = model.preprocess.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_agrees_with_eager_within_1e_4(
    banked: SemclipModel, onnx_file: Path, batch: int
) -> None:
    x = _images(banked, batch, seed=batch)
    with torch.inference_mode():
        probs, amap = ExportedSemclip(banked).eval()(x)
    got = onnx_session(onnx_file).run(list(OUTPUT_NAMES), {"images": x.numpy()})
    g = banked.encoder.grid
    assert got[0].shape == (batch, len(banked.classes)) and got[1].shape == (batch, g, g)
    np.testing.assert_allclose(got[0], probs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], amap.numpy(), atol=1e-4, rtol=0)
    assert np.allclose(got[0].sum(axis=1), 1.0, atol=1e-5)
    report = check_and_time(banked, onnx_file, x, repeats=1)
    assert report.max_abs_prob <= 1e-4 and report.max_abs_map <= 1e-4
    assert report.onnx_img_s > 0 and report.eager_img_s > 0


def test_eager_module_is_the_production_math(banked: SemclipModel) -> None:
    """Probabilities as run_heads gives them (on fp32 features); the map from the same parts."""
    module = ExportedSemclip(banked).eval()
    x = _images(banked, 2, seed=5)
    with torch.inference_mode():
        probs, amap = module(x)
        tokens, vv = module.features(x)
        from semclip.features import Features

        out = run_heads(
            banked.heads,
            Features(tokens, vv),
            banked.calibration,
            banked.good_index,
            banked.preprocess.image_size,
            membank=banked.membank,
        )
        surgery = surgery_maps(vv, banked.heads.text, banked.good_index)
        clip = patch_clip_map(banked.heads, tokens, surgery, banked.good_index)
        knn = banked.membank.anomaly(banked.membank.patch_tokens(tokens, vv))
    torch.testing.assert_close(probs, out.probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        membank_anomaly(banked.membank, banked.membank.patch_tokens(tokens, vv)),
        knn,
        atol=1e-6,
        rtol=0,
    )
    g = banked.encoder.grid
    own = anomaly(self_similarity(x), banked.calibration.selfsim_scale)[:, None]
    own = torch.nn.functional.interpolate(own, size=(g, g), mode="bilinear")[:, 0]  # per patch
    expected = 0.75 * (0.6 * clip + 0.4 * knn).view(2, g, g) + 0.25 * own
    torch.testing.assert_close(amap, expected, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("region_map", ["fused", "self", "both"])
def test_onnx_with_a_region_head_agrees_with_eager(
    regioned: SemclipModel, tmp_path: Path, region_map: str
) -> None:
    """The region head in the graph: P_fused · P_region^w, P_region from the graph's own map,
    or from its self-similarity part alone where the calibration reads the region there."""
    head = RegionHead.from_dict(regioned.calibration.region_head)
    if region_map == "both":  # a head on both maps' features: the fitted one, read on each
        half = [tuple(v / 2 for v in row) for row in head.weight]
        head = replace(
            head,
            mean=head.mean * 2,
            scale=head.scale * 2,
            weight=tuple(row + row for row in half),
        )
    cal = replace(regioned.calibration, region_map=region_map, region_head=head.to_dict())
    model = replace(regioned, calibration=cal)
    path = export_onnx(model, tmp_path / "region.onnx")
    x = _images(model, 3, seed=7)
    module = ExportedSemclip(model).eval()
    with torch.inference_mode():
        probs, amap = module(x)
        plain, _ = ExportedSemclip(replace(model, calibration=replace(cal, region_weight=0.0)))(x)
    got = onnx_session(path).run(list(OUTPUT_NAMES), {"images": x.numpy()})
    np.testing.assert_allclose(got[0], probs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], amap.numpy(), atol=1e-4, rtol=0)
    own = anomaly(self_similarity(x), cal.selfsim_scale)[:, None]
    own = torch.nn.functional.interpolate(own, size=amap.shape[1:], mode="bilinear")[:, 0]
    sources = {"fused": [amap], "self": [own], "both": [amap, own]}[region_map]
    side = min(model.preprocess.image_size, THUMB)
    feats = [
        region_features(
            thumbnail(x), F.interpolate(m[:, None], size=(side, side), mode="bilinear")[:, 0]
        )
        for m in sources
    ]
    expected = fuse_region(plain, head.log_probs(torch.cat(feats, dim=1)), 2.0)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_onnx_file_carries_classes_tau_and_the_random_flag(
    banked: SemclipModel, onnx_file: Path
) -> None:
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(meta["classes"]) == list(banked.classes)
    assert float(meta["tau"]) == banked.calibration.tau
    assert meta["random_backbone"] == "true" and "RANDOM WEIGHTS" in meta["backbone"]


@pytest.mark.slow
def test_cli_export_prints_agreement_and_throughput(
    fitted_model: SemclipModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model_dir = tmp_path / "model"
    save_model(fitted_model, model_dir)
    out = tmp_path / "out" / "m.onnx"
    args = ["export", "--onnx", "--model", str(model_dir), "--out", str(out)]
    assert main([*args, "--check-batch", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "RANDOM WEIGHTS" in printed
    assert "agreement with eager fp32" in printed and "tolerance 1e-04" in printed
    assert "ONNX Runtime" in printed and "eager PyTorch" in printed and "img/s" in printed
