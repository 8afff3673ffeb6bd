"""Within-image self-similarity: periodic patterns score low, what breaks them scores high,
and the map reaches the defect map through features, the cache, calibration and prediction."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from semclip.artifact import load_model, save_model
from semclip.backbone import load_backbone
from semclip.config import Calibration
from semclip.encoder import DualPathEncoder
from semclip.feature_cache import FeatureCache
from semclip.features import Features, Preprocess, extract_features
from semclip.heads import SemclipHeads
from semclip.inference import run_heads
from semclip.model import ImageScores
from semclip.selfsim import anomaly, grid_side, normal_scale, self_similarity


def lines(size: int = 128, pitch: int = 12, angle: float = 0.3) -> torch.Tensor:
    """A tilted line pattern (B = 1, H, W): every patch has a twin a pitch away."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / pitch
    return (0.5 + 0.3 * torch.sin(phase))[None].float()


def test_a_blob_on_a_periodic_pattern_is_the_least_self_similar_place() -> None:
    image = lines()
    image[0, 80:92, 30:42] = 1.0  # a bright particle
    d = self_similarity(image)
    g = grid_side()
    assert d.shape == (1, g, g)
    y, x = divmod(int(d.flatten().argmax()), g)
    cell = 128 / 64 * 4  # input pixels per grid step (SIZE 64, STRIDE 4)
    assert 80 - 16 <= y * cell <= 92 and 30 - 16 <= x * cell <= 42
    far = d[0, :6, :].mean()  # rows far above the particle
    assert float(d.max()) > 5 * float(far)


def test_brightness_drift_and_a_constant_offset_are_not_defects() -> None:
    base = self_similarity(lines())
    drifted = lines() + 0.2 + torch.linspace(0, 0.1, 128)[None, None, :]  # offset + slow ramp
    assert torch.allclose(self_similarity(drifted), base, atol=0.05)


def test_channels_and_batches() -> None:
    image = lines()
    rgb = image[:, None].expand(2, 3, -1, -1).clone()  # (B, 3, H, W): the first channel is read
    rgb[1, 1:] = 0.0
    d = self_similarity(rgb)
    assert d.shape[0] == 2 and torch.allclose(d[0], d[1])
    assert torch.allclose(d[0], self_similarity(image)[0])
    with pytest.raises(ValueError, match="B, C, H, W"):
        self_similarity(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="patch"):
        self_similarity(image, size=4, patch=8)


def test_scale_and_anomaly() -> None:
    d = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    scale = normal_scale(d, quantile=1.0)
    assert scale == pytest.approx(3.0)
    a = anomaly(d, scale)
    assert float(a[0, 1, 1]) == pytest.approx(0.5) and float(a.min()) == 0.0 and float(a.max()) < 1
    assert normal_scale(torch.zeros(3, 2, 2)) > 0  # a perfect pattern does not divide by zero
    with pytest.raises(ValueError, match="good image"):
        normal_scale(torch.zeros(0))


def test_features_carry_self_similarity_through_index_cat_and_the_disk_cache(tmp_path) -> None:
    backbone = load_backbone("semclip-tiny", pretrained=None, device="cpu")
    encoder = DualPathEncoder(backbone.model, 2)
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    feats = extract_features(encoder, images)
    g = grid_side()
    assert feats.selfsim is not None and feats.selfsim.shape == (3, g, g)
    assert torch.allclose(feats.selfsim.float(), self_similarity(images), atol=1e-2)
    assert feats[[0, 2]].selfsim.shape == (2, g, g)
    assert Features.cat([feats[:1], feats[1:]]).selfsim.shape == (3, g, g)
    assert Features.cat([feats, Features(feats.tokens, feats.vv)]).selfsim is None

    prep = Preprocess(backbone.image_size, backbone.mean, backbone.std)
    cache = FeatureCache(backbone, prep, 2, folder=tmp_path, memory=False)
    calls: list[list[int]] = []

    def compute(missing: list[int]) -> Features:
        calls.append(missing)
        return feats[missing]

    cache.get(["a", "b"], compute)
    again = cache.get(["a", "b"], compute)
    assert calls == [[0, 1]] and torch.equal(again.selfsim, feats.selfsim[:2])
    # an entry written before self-similarity existed is recomputed, not used without it
    save_file({"tokens": feats.tokens[:1], "vv": feats.vv[:1]}, str(cache.folder / "c.safetensors"))
    cache.get(["c"], compute)
    assert calls[-1] == [0]


def test_run_heads_fuses_the_self_similarity_map_by_its_weight() -> None:
    n, m, g, width, embed, k = 2, 2, 4, 8, 6, 3
    tokens = torch.randn(n, m, 1 + g * g, width)
    vv = torch.randn(n, m, 1 + g * g, embed)
    selfsim = torch.zeros(n, 15, 15)
    selfsim[0, 10:13, 2:5] = 10.0  # image 0 has a place without a twin
    heads = SemclipHeads(m, width, embed, torch.randn(k, embed))
    plain = run_heads(heads, Features(tokens, vv), Calibration(), 0, 32)
    without = run_heads(heads, Features(tokens, vv, selfsim), Calibration(), 0, 32)
    assert plain.selfsim_map is None and torch.equal(plain.score_map, without.score_map)
    fused = run_heads(
        heads,
        Features(tokens, vv, selfsim),
        Calibration(selfsim_weight=1.0, selfsim_scale=1.0),
        0,
        32,
    )
    assert fused.selfsim_map is not None and torch.allclose(fused.score_map, fused.selfsim_map)
    y, x = divmod(int(fused.score_map[0].flatten().argmax()), 32)
    assert y > 16 and x < 16  # where image 0's selfsim peak is (rows 10-12, cols 2-4 of 15)
    assert float(fused.score_map[1].max()) == pytest.approx(0.0, abs=1e-6)


def test_the_plot_script_draws_one_column_per_defect_class(synth_dir, tmp_path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "plot_selfsim.py"
    out = tmp_path / "selfsim.png"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(synth_dir), "--out", str(out), "--dpi", "40"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stat().st_size > 1000 and "images, scale" in done.stdout


def test_a_fitted_model_scales_saves_and_predicts_with_the_self_similarity_map(
    fitted_model, support_split, tmp_path
) -> None:
    """End to end on the tiny model: the fit measures the good shots' scale, the artifact keeps
    γ and the scale, and the loaded model's maps change when γ is set to 0."""
    cal = fitted_model.calibration
    assert cal.selfsim_scale != 1.0 and cal.selfsim_scale > 0  # measured, not the default
    weighted = replace(fitted_model, calibration=replace(cal, selfsim_weight=0.5))
    loaded = load_model(save_model(weighted, tmp_path / "model"), verify=False)
    assert loaded.calibration.selfsim_weight == 0.5
    assert loaded.calibration.selfsim_scale == pytest.approx(cal.selfsim_scale)
    images = [s.image for s in support_split[1].samples[:2]]
    with_map = loaded.score(images)
    loaded.calibration = replace(loaded.calibration, selfsim_weight=0.0)
    without = loaded.score(images)
    assert all(isinstance(x, ImageScores) for x in with_map + without)
    diff = [abs(a.score_map - b.score_map).max() for a, b in zip(with_map, without, strict=True)]
    assert max(diff) > 1e-3
