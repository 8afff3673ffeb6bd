"""The region head: features of the map's peak region, its classifier, fusion, calibration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from semclip import SemclipModel, load_backbone
from semclip.artifact import load_model, save_model
from semclip.config import Calibration, FitConfig
from semclip.encoder import DualPathEncoder
from semclip.feature_cache import FeatureCache
from semclip.features import Features, Preprocess, extract_features
from semclip.heads import SemclipHeads
from semclip.inference import run_heads
from semclip.region_head import (
    REGION_FEATURES,
    THUMB,
    RegionHead,
    fuse_region,
    peak_region,
    region_features,
    region_maps,
    thumbnail,
)
from semclip.train import _choose_region, _choose_region_map

FEATURE = {name: i for i, name in enumerate(REGION_FEATURES)}
SIDE = 64


def _scene(shape: str, value: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy grey image with one defect and a map that is high on it (blurred mask)."""
    gen = torch.Generator().manual_seed(seed)
    img = 0.5 + 0.02 * torch.randn(SIDE, SIDE, generator=gen)
    mask = torch.zeros(SIDE, SIDE)
    if shape == "disc":
        ys, xs = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
        mask[((ys - 30) ** 2 + (xs - 20) ** 2) <= 36] = 1.0
    elif shape == "bar":
        mask[30:32, 8:56] = 1.0
    img = img + (value - 0.5) * mask
    smooth = torch.nn.functional.avg_pool2d(mask[None, None], 3, stride=1, padding=1)[0, 0]
    return img, 0.1 + 0.8 * smooth


def test_the_peak_region_is_the_connected_part_that_holds_the_maximum() -> None:
    maps = torch.zeros(1, 32, 32)
    maps[0, 4:8, 4:8] = 1.0  # the peak's blob
    maps[0, 20:30, 20:30] = 0.9  # another blob above the threshold, not connected
    region, above = peak_region(maps)
    assert region[0, 4:8, 4:8].all() and region.sum() == 16
    assert above.sum() == 16 + 100
    fixed, _ = peak_region(maps, fill_steps=64)
    assert torch.equal(fixed, region)  # a fixed number of steps (ONNX) reaches the same region


def test_region_features_tell_a_bright_disc_from_a_dark_bar() -> None:
    disc = region_features(*[t[None] for t in _scene("disc", value=0.9)])[0]
    bar = region_features(*[t[None] for t in _scene("bar", value=0.1)])[0]
    assert disc.shape == (len(REGION_FEATURES),)
    assert float(disc[FEATURE["contrast"]]) > 3 and float(bar[FEATURE["contrast"]]) < -3
    assert float(bar[FEATURE["log_elongation"]]) > float(disc[FEATURE["log_elongation"]]) + 1
    assert float(disc[FEATURE["extent"]]) > float(bar[FEATURE["extent"]]) - 0.1
    area = float(torch.exp(disc[FEATURE["log_area"]]))
    assert 100 < area < 250  # the disc (113 px) and the blurred rim the map adds
    assert float(disc[FEATURE["peak_share"]]) == pytest.approx(1.0)
    assert float(disc[FEATURE["map_peak"]]) == pytest.approx(0.9, abs=1e-5)
    # the map at another resolution is area-resized to the thumbnail: same region
    img, smap = _scene("disc", value=0.9)
    up = torch.nn.functional.interpolate(smap[None, None], scale_factor=2, mode="nearest")[0]
    again = region_features(img[None], up)[0]
    assert float(again[FEATURE["log_area"]]) == pytest.approx(float(disc[FEATURE["log_area"]]))


def test_the_model_normalisation_does_not_change_the_contrasts() -> None:
    img, smap = _scene("disc", value=0.9)
    plain = region_features(img[None], smap[None])[0]
    normalised = region_features(((img - 0.48) / 0.27)[None], smap[None])[0]
    torch.testing.assert_close(plain, normalised, atol=1e-3, rtol=1e-3)


def test_thumbnail_is_the_first_channel_area_resized() -> None:
    big = torch.rand(2, 3, 2 * THUMB, 2 * THUMB)
    thumbs = thumbnail(big)
    assert thumbs.shape == (2, THUMB, THUMB)
    torch.testing.assert_close(thumbs[0, 0, 0], big[0, 0, :2, :2].mean())
    assert thumbnail(torch.rand(1, 3, 40, 40)).shape == (1, 40, 40)  # small inputs keep theirs


def _scenes(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(thumbs, maps, labels) of three classes that differ in contrast and elongation; "good"
    (class 0) with a flat map."""
    thumbs, maps, labels = [], [], []
    for label, (shape, value) in enumerate([("disc", 0.5), ("disc", 0.9), ("bar", 0.1)]):
        for i in range(n_per_class):
            img, smap = _scene(shape, value=value, seed=seed * 100 + 10 * label + i)
            if label == 0:
                smap = 0.1 + 0.01 * torch.rand(
                    SIDE, SIDE, generator=torch.Generator().manual_seed(i)
                )
            thumbs.append(img)
            maps.append(smap)
            labels.append(label)
    return torch.stack(thumbs), torch.stack(maps), np.array(labels)


def _blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Region features and labels of the `_scenes` classes."""
    thumbs, maps, labels = _scenes(n_per_class, seed)
    return region_features(thumbs, maps).numpy(), labels


def test_the_region_head_learns_separable_regions_and_round_trips_as_json() -> None:
    x, y = _blobs(4, seed=1)
    head = RegionHead.fit(x, y, n_classes=4)  # class 3 has no samples: never chosen
    x_test, y_test = _blobs(3, seed=2)
    log_q = head.log_probs(torch.from_numpy(x_test))
    assert log_q.shape == (len(y_test), 4)
    assert (log_q.argmax(1).numpy() == y_test).all()
    assert float(log_q[:, 3].exp().max()) < 1e-6
    again = RegionHead.from_dict(json.loads(json.dumps(head.to_dict())))
    torch.testing.assert_close(again.log_probs(torch.from_numpy(x_test)), log_q)
    two = RegionHead.fit(x[y < 2], y[y < 2], n_classes=3)  # sklearn's one-row binary case
    assert (two.log_probs(torch.from_numpy(x[y < 2])).argmax(1).numpy() == y[y < 2]).all()
    with pytest.raises(ValueError, match="two classes"):
        RegionHead.fit(x[y == 0], y[y == 0], n_classes=3)


def test_fusion_weight_zero_is_the_identity_and_a_large_one_follows_the_region() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    log_q = torch.log(torch.tensor([[0.05, 0.05, 0.9]]))
    torch.testing.assert_close(fuse_region(probs, log_q, 0.0), probs)
    assert int(fuse_region(probs, log_q, 4.0).argmax()) == 2
    assert float(fuse_region(probs, log_q, 1.0).sum()) == pytest.approx(1.0)


def test_cross_validation_uses_the_region_head_only_where_it_helps() -> None:
    x, y = _blobs(4, seed=3)
    folds = np.tile(np.arange(2), len(y) // 2)
    flat = torch.full((len(y), 3), 1.0 / 3)  # P_fused knows nothing
    head, weight, acc = _choose_region(x, y, folds, flat)
    assert head is not None and weight > 0 and acc == pytest.approx(1.0)
    perfect = torch.nn.functional.one_hot(torch.from_numpy(y), 3).float() * 0.98 + 0.01
    noise = np.random.default_rng(0).normal(size=x.shape)  # regions that say nothing
    _, weight, acc = _choose_region(noise, y, folds, perfect)
    assert weight == 0.0 and acc == pytest.approx(1.0)
    one_class = np.where(folds == 0, 0, y)  # a fold whose complement is one class
    one_class[folds == 1] = 0
    assert _choose_region(x, one_class, folds, flat) == (None, 0.0, None)


def test_the_region_is_read_on_the_map_whose_regions_name_the_classes() -> None:
    """Cross-validation between candidate maps: the one whose peak region lies on the defect
    wins; where both say the same, the first (the fused map S) is kept."""
    thumbs, maps, labels = _scenes(4, seed=5)
    folds = np.tile(np.arange(2), len(labels) // 2)
    flat = torch.full((len(labels), 3), 1.0 / 3)
    lost = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))  # peaks anywhere
    on_lost, on_defect = (region_features(thumbs, m).numpy() for m in (lost, maps))
    head, weight, acc, name = _choose_region_map(
        {"fused": on_lost, "self": on_defect}, labels, folds, flat
    )
    assert name == "self" and head is not None and weight > 0 and acc == pytest.approx(1.0)
    pair = np.concatenate(region_maps("both", on_defect, on_defect), axis=1)
    both = {"fused": on_defect, "self": on_defect, "both": pair}
    head, *_, name = _choose_region_map(both, labels, folds, flat)
    assert name == "fused" and len(head.mean) == len(REGION_FEATURES)
    pair = np.concatenate(region_maps("both", on_lost, on_defect), axis=1)
    head, *_, name = _choose_region_map({"both": pair}, labels, folds, flat)
    assert name == "both" and len(head.mean) == 2 * len(REGION_FEATURES)  # side by side
    *_, name = _choose_region_map({"self": on_defect}, labels, folds, flat)
    assert name == "self"  # a forced choice (FitConfig.region_map) is the only candidate
    assert region_maps("self", on_lost, None) is None  # S_self asked for, none there
    with pytest.raises(ValueError, match="candidate"):
        _choose_region_map({}, labels, folds, flat)


def _random_heads(n: int) -> tuple[SemclipHeads, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heads, tokens, vv, thumbs) of random numbers: 2 stages, a 4 × 4 grid, 3 classes."""
    m, g, width, embed, k = 2, 4, 8, 6, 3
    gen = torch.Generator().manual_seed(0)
    tokens, vv = (
        torch.randn(n, m, 1 + g * g, width, generator=gen),
        torch.randn(n, m, 1 + g * g, embed, generator=gen),
    )
    heads = SemclipHeads(m, width, embed, torch.randn(k, embed, generator=gen))
    return heads, tokens, vv, torch.rand(n, 32, 32, generator=gen)


def test_run_heads_reads_the_region_on_the_self_similarity_map_when_chosen() -> None:
    """region_map "self": P_region comes from S_self's peak region, even with γ = 0 (S_self then
    names the defect without entering the defect map); "both": the two regions' features."""
    n, k = 3, 3
    heads, tokens, vv, thumbs = _random_heads(n)
    selfsim = torch.rand(n, 15, 15, generator=torch.Generator().manual_seed(1))
    feats = Features(tokens, vv, selfsim, thumbs)
    x, y = _blobs(3, seed=1)
    head = RegionHead.fit(x, y, n_classes=k).to_dict()
    base = Calibration(region_head=head, region_weight=1.0, selfsim_weight=0.0)
    on_self = run_heads(heads, feats, replace(base, region_map="self"), 0, 32)
    on_fused = run_heads(heads, feats, base, 0, 32)
    assert on_self.selfsim_map is not None and on_fused.selfsim_map is None
    torch.testing.assert_close(on_self.score_map, on_fused.score_map)  # γ = 0: S unchanged
    expected = RegionHead.from_dict(head).log_probs(region_features(thumbs, on_self.selfsim_map))
    torch.testing.assert_close(on_self.p_region.log(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(on_self.p_region, on_fused.p_region)
    xx = np.concatenate([x, x[::-1]], axis=1)  # a head fitted on two maps' features
    two = replace(base, region_map="both", region_head=RegionHead.fit(xx, y, k).to_dict())
    on_both = run_heads(heads, feats, two, 0, 32)
    pair = torch.cat(
        [region_features(thumbs, on_both.score_map), region_features(thumbs, on_both.selfsim_map)],
        dim=1,
    )
    head_two = RegionHead.from_dict(two.region_head)
    torch.testing.assert_close(on_both.p_region.log(), head_two.log_probs(pair), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="region map"):
        run_heads(heads, feats, replace(base, region_map="neither"), 0, 32)
    bare = run_heads(
        heads, Features(tokens, vv, None, thumbs), replace(base, region_map="self"), 0, 32
    )
    assert bare.p_region is None  # no self-similarity in the features: no region to read


def test_run_heads_fuses_the_region_head_by_its_weight() -> None:
    heads, tokens, vv, thumbs = _random_heads(2)
    feats = Features(tokens, vv, None, thumbs)
    weight = ((0.0,) * len(REGION_FEATURES),) * 2 + ((0.0,) * len(REGION_FEATURES),)
    head = RegionHead(
        (0.0,) * len(REGION_FEATURES), (1.0,) * len(REGION_FEATURES), weight, (0.0, 0.0, 5.0)
    )
    plain = run_heads(heads, feats, Calibration(), 0, 32)
    unused = run_heads(heads, feats, Calibration(region_head=head.to_dict()), 0, 32)
    assert plain.p_region is None and torch.equal(plain.probs, unused.probs)
    fused = run_heads(
        heads, feats, Calibration(region_head=head.to_dict(), region_weight=4.0), 0, 32
    )
    assert fused.p_region is not None and (fused.p_region.argmax(1) == 2).all()
    expected = fuse_region(plain.probs, fused.p_region.log(), 4.0)
    torch.testing.assert_close(fused.probs, expected, atol=1e-5, rtol=0)
    no_thumbs = run_heads(
        heads,
        Features(tokens, vv),
        Calibration(region_head=head.to_dict(), region_weight=4.0),
        0,
        32,
    )
    assert torch.equal(no_thumbs.probs, plain.probs)


def test_features_carry_thumbnails_and_older_cache_entries_are_recomputed(tmp_path: Path) -> None:
    backbone = load_backbone("semclip-tiny", pretrained=None, device="cpu")
    encoder = DualPathEncoder(backbone.model, 2)
    size = backbone.image_size
    images = torch.randn(3, 3, size, size)
    feats = extract_features(encoder, images)
    side = min(size, THUMB)
    assert feats.thumb is not None and feats.thumb.dtype == torch.float16
    assert feats.thumb.shape == (3, side, side)
    torch.testing.assert_close(feats.thumb.float(), thumbnail(images), atol=1e-2, rtol=1e-2)
    assert feats[[0, 2]].thumb.shape == (2, side, side)
    assert Features.cat([feats[:1], feats[1:]]).thumb.shape == (3, side, side)
    assert Features.cat([feats, Features(feats.tokens, feats.vv, feats.selfsim)]).thumb is None

    prep = Preprocess(size, backbone.mean, backbone.std)
    cache = FeatureCache(backbone, prep, 2, folder=tmp_path, memory=False)
    calls: list[list[int]] = []

    def compute(missing: list[int]) -> Features:
        calls.append(missing)
        return feats[missing]

    again = cache.get(["a"], compute)
    assert torch.equal(cache.get(["a"], compute).thumb, again.thumb) and calls == [[0]]
    older = {"tokens": feats.tokens[:1], "vv": feats.vv[:1], "selfsim": feats.selfsim[:1]}
    save_file(older, str(cache.folder / "b.safetensors"))  # written before thumbnails
    assert cache.get(["b"], compute).thumb is not None and calls[-1] == [0]


def test_calibration_fits_a_region_head_that_the_saved_model_keeps(
    fitted_model: SemclipModel, support_split, tmp_path: Path
) -> None:
    """k = 2 fit: the region head comes out of calibration (or not, by its flag), is saved in
    the artifact with its weight, and the loaded model predicts with it."""
    calibration = fitted_model.calibration
    assert calibration.region_head is not None
    assert calibration.details["cv_region_accuracy"] is not None
    support, test = support_split
    off = SemclipModel.fit(fitted_model.backbone, support, config=FitConfig(region_head=False))
    assert off.calibration.region_head is None and off.calibration.region_weight == 0.0
    forced = replace(fitted_model, calibration=replace(calibration, region_weight=2.0))
    save_model(forced, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.calibration.region_weight == 2.0
    assert loaded.calibration.region_head == calibration.region_head
    images = [s.image for s in test.samples[:3]]
    with_region = [p.probabilities for p in loaded.predict(images)]
    without = replace(loaded, calibration=replace(loaded.calibration, region_weight=0.0))
    plain = [p.probabilities for p in without.predict(images)]
    assert with_region != plain
    assert with_region == [p.probabilities for p in forced.predict(images)]
