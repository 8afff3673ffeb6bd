"""The learner's pieces on synthetic features whose answers are known (no backbone).

Features are built so that classes are linearly separable (CLS tokens) and defect patches differ
from background patches, or, where a test needs it, so that the head can only memorise.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from semclip.config import Calibration, FitConfig
from semclip.features import Features
from semclip.heads import fuse_probs
from semclip.inference import run_heads
from semclip.train import (
    ALPHA_GRID,
    MapParts,
    Plateau,
    SupportTensors,
    _choose_alpha,
    _choose_map,
    assign_folds,
    build_membank,
    calibrate,
    class_alphas,
    fit_heads,
    pixel_targets,
    support_loss,
)

M, WIDTH, EMBED, GRID, K = 2, 32, 16, 4, 3  # stages, token width, embed dim, patch grid, classes
P = GRID * GRID
SIZE = 16  # model resolution: 4 px per patch
GOOD = 0
# the plateau, not the budget, ends these fits: budget = clamp(epochs · N / batch, min, max)
FAST = FitConfig(
    augment=False, epochs=2000, min_steps=30, max_steps=800, plateau_patience=40, membank=False
)


def make_support(
    per_class: int = 4,
    *,
    seed: int = 0,
    cls_signal: float = 3.0,
    groups: list[str] | None = None,
    clip_wrong_every: int = 0,
) -> tuple[SupportTensors, torch.Tensor, torch.Tensor]:
    """Support of `per_class` images per class, with (support, text, proj_init).

    Class c's CLS tokens sit around `cls_signal · e_c` (0: pure noise, nothing to learn);
    defect images have the top-left 2×2 patches defective, those patches around `4 · e_{8+c}`
    on top of the normal texture `4 · e_5` that every patch has. `clip_wrong_every` > 0: the
    V-V CLS token is a class's text prototype, so CLIP's zero-shot P_clip is confident: wrong
    (the next class) on every n-th image of a class, right elsewhere.
    """
    gen = torch.Generator().manual_seed(seed)
    n = per_class * K
    labels = torch.arange(K).repeat_interleave(per_class)
    tokens = 0.3 * torch.randn(n, M, 1 + P, WIDTH, generator=gen)
    tokens[:, :, 0, :K] += cls_signal * F.one_hot(labels, K).float()[:, None]
    tokens[:, :, 1:, 5] += 4.0  # the normal texture every patch shares
    masks = torch.zeros(n, SIZE, SIZE)
    defect = labels != GOOD
    masks[defect, : SIZE // 2, : SIZE // 2] = 1.0
    coverage = F.adaptive_avg_pool2d(masks[:, None], GRID).flatten(1)  # (n, P)
    for i in torch.nonzero(defect).flatten():
        tokens[i, :, 1:][:, coverage[i] > 0, 8 + labels[i]] += 4.0
    text = F.normalize(torch.randn(K, EMBED, generator=gen), dim=-1)
    vv = 0.05 * torch.randn(n, M, 1 + P, EMBED, generator=gen)
    vv[:, :, 1:][..., :] += tokens[:, :, 1:, :EMBED]  # V-V patches carry the defect signal
    if clip_wrong_every:
        wrong = torch.arange(n) % per_class % clip_wrong_every == 0
        vv[:, :, 0] = text[torch.where(wrong, (labels + 1) % K, labels)][:, None]
    proj = torch.randn(WIDTH, EMBED, generator=gen) / WIDTH**0.5
    support = SupportTensors(
        feats=Features(tokens, vv),
        labels=labels,
        patch_target=coverage,
        has_mask=torch.ones(n, dtype=torch.bool),
        image_index=torch.arange(n),
        aug_index=torch.zeros(n, dtype=torch.long),
        masks=masks,
        image_has_mask=torch.ones(n, dtype=torch.bool),
        groups=groups or [f"image-{i}" for i in range(n)],
    )
    return support, text, proj


# ----------------------------------------------------------------------------- fitting
@pytest.mark.slow
def test_loss_falls_and_fits_separable_support() -> None:
    support, text, proj = make_support()
    history: list[dict[str, float]] = []
    heads = fit_heads(support, text, GOOD, FAST, proj, torch.device("cpu"), history)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.5 * first
    assert len(history) < FAST.max_steps  # stopped on the plateau, not the budget
    tokens = support.feats.tokens.float()
    with torch.no_grad():
        assert (heads.head_logits(tokens).argmax(1) == support.labels).float().mean() == 1.0
        patch = heads.patch_logits(tokens).softmax(-1)[..., GOOD].mean(1)  # (N, P) P(good)
    defect_patch = support.patch_target > 0
    assert patch[defect_patch].max() < 0.5 < patch[~defect_patch].min()


@pytest.mark.slow
def test_held_out_images_classified_by_the_head() -> None:
    support, text, proj = make_support(seed=0)
    test, _, _ = make_support(seed=1)  # new images of the same classes
    test = replace(test, feats=Features(test.feats.tokens, test.feats.vv))
    heads = fit_heads(support, text, GOOD, FAST, proj, torch.device("cpu"))
    with torch.no_grad():
        pred = heads.head_logits(test.feats.tokens.float()).argmax(1)
    assert (pred == test.labels).float().mean() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("head_init", ["prototype", "random"])
def test_fit_is_deterministic(head_init: str) -> None:
    support, text, proj = make_support()
    config = replace(FAST, head_init=head_init, max_steps=40)
    a = fit_heads(support, text, GOOD, config, proj, torch.device("cpu")).state_dict()
    b = fit_heads(support, text, GOOD, config, proj, torch.device("cpu")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prototype_init_classifies_before_training() -> None:
    support, text, proj = make_support()
    config = replace(FAST, min_steps=0, max_steps=0)  # no optimiser step at all
    heads = fit_heads(support, text, GOOD, config, proj, torch.device("cpu"))
    with torch.no_grad():
        pred = heads.head_logits(support.feats.tokens.float()).argmax(1)
    assert (pred == support.labels).all()


def test_plateau_stops_on_a_flat_loss_only() -> None:
    flat = Plateau(patience=10)
    assert not any(flat.update(1.0) for _ in range(10))
    assert flat.update(1.0)
    falling = Plateau(patience=10)
    assert not any(falling.update(1.0 - i / 300) for i in range(200))
    vanishing = Plateau(patience=10)  # lows below PLATEAU_ABS are not progress
    assert any(vanishing.update(0.9**i) for i in range(200))
    assert not any(Plateau(0).update(1.0) for _ in range(100))  # patience 0: never


# ------------------------------------------------------------------------- pixel targets
def test_pixel_targets_class_inside_good_outside_coverage_weighted() -> None:
    frac = torch.tensor([[0.0, 1.0, 0.25], [0.0, 0.0, 0.0]])  # (b=2, p=3)
    labels = torch.tensor([2, 0])  # a class-2 defect image, a good image
    target = pixel_targets(frac, labels, GOOD, K)  # (2, 3, K)
    expected = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.75, 0.0, 0.25]],
            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
        ]
    )
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.sum(-1), torch.ones(2, 3))


@pytest.mark.parametrize("per_image", [False, True])
def test_support_loss_parts_are_finite_and_patch_sampling_is_used(per_image: bool) -> None:
    support, text, proj = make_support()
    heads = fit_heads(support, text, GOOD, replace(FAST, max_steps=0, min_steps=0), proj, "cpu")
    config = replace(FAST, dice_per_image=per_image)
    idx = torch.arange(len(support.feats))
    loss, parts = support_loss(heads, support, idx, torch.arange(P), GOOD, config, "cpu")
    assert torch.isfinite(loss) and set(parts) == {"focal", "dice", "ce"}
    assert 0.0 <= parts["dice"] <= 1.0


# ------------------------------------------------------------------------------- folds
def test_folds_keep_groups_together_and_hold_every_class() -> None:
    groups = [f"wafer-{i // 2}" for i in range(12)]  # 2 images per wafer, 2 wafers per class
    support, _, _ = make_support(per_class=4, groups=groups)
    folds = assign_folds(support, 3)
    assert folds is not None
    for g in set(groups):
        members = [i for i, x in enumerate(groups) if x == g]
        assert len({int(folds[i]) for i in members}) == 1  # a wafer never spans two folds
    for c in range(K):
        in_class = folds[support.labels == c]
        assert len(in_class.unique()) == 2  # two wafers → two folds, one wafer each


def test_no_folds_when_a_class_has_one_unit() -> None:
    groups = ["w0"] * 4 + [f"w{i}" for i in range(1, 9)]  # all good images on one wafer
    support, _, _ = make_support(per_class=4, groups=groups)
    assert assign_folds(support, 3) is None


# ---------------------------------------------------------------- α, τ, β on held-out folds
@pytest.mark.slow  # cross-validated fits, 15 s
def test_alpha_is_chosen_on_held_out_folds_not_in_sample() -> None:
    """The head can only memorise (noise CLS); P_clip is right on 2 images in 3. In sample the
    head looks perfect and a small α wins; held out the head is at chance, so α must be large."""
    support, text, proj = make_support(per_class=6, cls_signal=0.0, clip_wrong_every=3)
    config = replace(FAST, head_init="random", cv_folds=3)
    heads = fit_heads(support, text, GOOD, config, proj, torch.device("cpu"))
    in_sample = run_heads(heads, support.feats, Calibration(pclip_source="clip"), GOOD, SIZE)
    assert (in_sample.p_head.argmax(1) == support.labels).all()  # memorised
    alpha_in, _ = _choose_alpha(support.labels, in_sample.p_clip, in_sample.p_head)
    cal = calibrate(support, text, GOOD, config, proj, SIZE, torch.device("cpu"))
    assert cal.method == "cross-validation"
    assert cal.pclip_source == "clip"
    assert cal.details["cv_accuracy"] == pytest.approx(2 / 3)
    assert alpha_in < 0.5 < cal.alpha


def test_choose_alpha_grid_and_tie_break() -> None:
    labels = torch.tensor([0, 1])
    p_clip = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    p_head = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # always wrong
    alpha, acc = _choose_alpha(labels, p_clip, p_head)
    assert acc == 1.0 and alpha in ALPHA_GRID and alpha > 0.5
    alpha, _ = _choose_alpha(labels, p_head, p_head.flip(1))  # the head right, P_clip wrong
    assert alpha < 0.5


def test_map_weights_and_tau_chosen_on_held_out_masks() -> None:
    support, _, _ = make_support(per_class=2)
    index = torch.arange(len(support.feats))
    truth = support.masks
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    right = 0.2 + 0.6 * truth
    grid = (0.0, 0.5, 1.0)

    def choose(clip: torch.Tensor, knn: torch.Tensor, own: torch.Tensor):
        return _choose_map(support, index, MapParts(clip, knn, own), grid, grid, FAST)

    beta, gamma, tau, f1 = choose(noise, right, noise)
    assert (beta, gamma) == (1.0, 0.0) and f1 == pytest.approx(1.0) and 0.2 < tau < 0.81
    beta, gamma, _, f1 = choose(noise, noise, right)
    assert gamma == 1.0 and f1 == pytest.approx(1.0)
    beta, gamma, _, _ = choose(truth, noise, noise)
    assert (beta, gamma) == (0.0, 0.0)


@pytest.mark.slow  # cross-validated fits, ~10 s
def test_self_similarity_weight_is_chosen_where_only_it_finds_the_defect() -> None:
    """The patch tokens carry no defect signal; the self-similarity distances are high exactly
    on the defect quarter. Held out, only S_self finds it, so γ must be large; with
    `selfsim=False` (or features without it) γ is 0 and the scale is left at 1."""
    support, text, proj = make_support(per_class=3)
    tokens, vv = support.feats.tokens.clone(), support.feats.vv.clone()
    tokens[:, :, 1:, 8 : 8 + K] = 0.0  # remove the defect channels from the patches
    vv[:, :, 1:, 8 : 8 + K] = 0.0
    gen = torch.Generator().manual_seed(1)
    selfsim = 0.1 * torch.rand(len(tokens), 15, 15, generator=gen)
    defect = support.labels != GOOD
    selfsim[defect, :7, :7] += 5.0  # the masked top-left quarter has no twin
    support = replace(support, feats=Features(tokens, vv, selfsim))
    config = replace(FAST, cv_folds=3)
    cal = calibrate(support, text, GOOD, config, proj, SIZE, torch.device("cpu"))
    assert cal.method == "cross-validation" and cal.selfsim_weight >= 0.5
    assert 0.05 < cal.selfsim_scale <= 0.1  # the good shots' high quantile, not the defects'
    off = calibrate(support, text, GOOD, replace(config, selfsim=False), proj, SIZE, "cpu")
    assert off.selfsim_weight == 0.0 and off.selfsim_scale == 1.0
    bare = replace(support, feats=Features(tokens, vv))
    assert calibrate(bare, text, GOOD, config, proj, SIZE, "cpu").selfsim_weight == 0.0


# ------------------------------------------------------------------------- memory bank
def test_membank_distance_zero_on_support_and_larger_far_away() -> None:
    support, _, _ = make_support()
    bank, units = build_membank(support, GOOD, replace(FAST, membank=True))
    vv = support.feats.vv[:, :, 1:]
    good_image = int(torch.nonzero(support.labels == GOOD)[0])
    d = bank.distances(vv[good_image : good_image + 1])  # (1, m, P)
    torch.testing.assert_close(d, torch.zeros_like(d), atol=1e-5, rtol=0)
    far = torch.zeros(1, M, P, EMBED)
    far[..., 9] = 1.0  # the direction of class-1 defects, never stored
    assert bank.distances(far).min() > 2 * bank.scale.max()
    # defect patches were never stored: they are far, the image's background is not
    defect_image = int(torch.nonzero(support.labels == 1)[0])
    d = bank.distances(vv[defect_image : defect_image + 1])[0].mean(0)  # (P,)
    defect = support.patch_target[defect_image] > 0
    assert d[defect].min() > d[~defect].max()
    assert (bank.scale > 0).all() and units.tolist() == support.image_index.tolist()


def test_membank_leave_one_out_ignores_own_image() -> None:
    support, _, _ = make_support()
    bank, units = build_membank(support, GOOD, replace(FAST, membank=True))
    vv = support.feats.vv[:2, :, 1:]
    own = bank.distances(vv)
    loo = bank.distances(vv, exclude=units[:2])
    assert own.abs().max() < 1e-5 < loo.min()


def test_membank_coreset_caps_the_bank_per_stage() -> None:
    support, _, _ = make_support(per_class=6)
    config = replace(FAST, membank=True, membank_max_patches=50)
    bank, _ = build_membank(support, GOOD, config)
    assert bank.bank.shape == (M, 50, EMBED)
    torch.testing.assert_close(bank.bank.norm(dim=-1), torch.ones(M, 50))


def test_membank_stores_augmented_copies_only_when_asked() -> None:
    support, _, _ = make_support()
    support = replace(support, aug_index=torch.arange(len(support.feats)) % 2)  # half "flips"
    normal = int((support.patch_target == 0).sum())  # upper bound on stored patches
    plain, _ = build_membank(support, GOOD, replace(FAST, membank=True))
    every, _ = build_membank(support, GOOD, replace(FAST, membank=True, membank_augmented=True))
    assert plain.bank.shape[1] < every.bank.shape[1] <= normal


def test_run_heads_fuses_the_bank_map_by_its_weight() -> None:
    support, text, proj = make_support()
    heads = fit_heads(support, text, GOOD, replace(FAST, max_steps=5, min_steps=5), proj, "cpu")
    bank, _ = build_membank(support, GOOD, replace(FAST, membank=True))
    feats = support.feats[:4]
    none = run_heads(heads, feats, Calibration(membank_weight=0.0), GOOD, SIZE, membank=bank)
    assert none.membank_map is None and torch.equal(none.score_map, none.clip_map)
    half = run_heads(heads, feats, Calibration(membank_weight=0.5), GOOD, SIZE, membank=bank)
    torch.testing.assert_close(half.score_map, 0.5 * half.clip_map + 0.5 * half.membank_map)
    assert half.membank_map.min() >= 0 and half.membank_map.max() <= 1


# ------------------------------------------------------------------- class-aware fusion
def test_class_aware_alpha_gives_the_head_for_unprompted_classes() -> None:
    p_clip = torch.tensor([[0.7, 0.3, 0.0]])  # CLIP has never heard of class 2
    p_head = torch.tensor([[0.2, 0.2, 0.6]])
    alphas = class_alphas(0.5, torch.tensor([True, True, False]))
    assert alphas == (0.5, 0.5, 0.0)
    p = fuse_probs(p_clip, p_head, torch.tensor(alphas))
    torch.testing.assert_close(p.sum(-1), torch.ones(1))
    raw = torch.tensor([0.45, 0.25, 0.6])  # α p_clip + (1 − α) p_head; class 2: the head's 0.6
    torch.testing.assert_close(p[0], raw / raw.sum())
    assert int(p.argmax()) == 2  # a global α = 0.5 would give 0.3 there and pick class 0
    assert int(fuse_probs(p_clip, p_head, torch.full((3,), 0.5)).argmax()) == 0
    assert class_alphas(0.5, torch.tensor([True, True, True])) is None


def test_calibration_alphas_and_stored_round_trip() -> None:
    cal = Calibration(alpha=0.3, class_alpha=(0.3, 0.0))
    assert cal.alphas(2) == (0.3, 0.0) and Calibration(alpha=0.3).alphas(2) == (0.3, 0.3)
    stored = {**cal.to_dict(), "class_alpha": [0.3, 0.0]}  # JSON gives lists
    assert Calibration.from_dict(stored) == cal
    old = {"tau": 0.6, "alpha": 0.2, "pclip_source": "clip", "method": "default", "details": {}}
    legacy = Calibration.from_dict(old)  # written before the fields existed: as it predicted
    assert legacy.class_alpha is None and legacy.membank_weight == 0.0
    assert legacy.surgery_scale == 1.0
    assert legacy.selfsim_weight == 0.0  # models saved before self-similarity predict as before
    assert legacy.region_weight == 0.0 and legacy.region_map == "fused"  # read on S, as before
