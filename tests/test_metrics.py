"""semclip.metrics against scikit-learn, hand-computed cases and the streaming histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from semclip.metrics import (
    PixelScoreHistogram,
    auroc,
    classification_metrics,
    f1_max,
    roc_curve_points,
)


def _tied_data(seed: int, n: int, pos_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes with heavy ties: scores rounded to 2 decimals (~100 values)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < pos_rate
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.15), 0, 1).round(2)
    return scores, labels


def _brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Max F1 over sklearn's precision-recall curve (one point per distinct threshold)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(f1.max())


def _f1_at(scores: np.ndarray, labels: np.ndarray, t: float) -> float:
    pred = scores >= t
    tp = np.count_nonzero(pred & labels)
    return 2 * tp / (np.count_nonzero(pred) + np.count_nonzero(labels))


# --- exact pixel / image metrics ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n", "pos_rate"), [(0, 50, 0.5), (1, 1_000, 0.1), (2, 20_000, 0.02), (3, 7, 0.4)]
)
def test_auroc_and_f1_max_match_sklearn_with_ties(seed: int, n: int, pos_rate: float) -> None:
    scores, labels = _tied_data(seed, n, pos_rate)
    assert labels.any() and not labels.all()
    value = auroc(scores, labels)
    assert isinstance(value, float)
    assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    f1, t = f1_max(scores, labels)
    assert isinstance(f1, float) and isinstance(t, float)
    assert f1 == pytest.approx(_brute_f1_max(scores, labels), abs=1e-12)
    assert _f1_at(scores, labels, t) == pytest.approx(f1, abs=1e-12)  # t achieves it


def test_float32_tensor_and_2d_inputs_give_the_same_result() -> None:
    scores, labels = _tied_data(4, 4_096, 0.2)
    expected = roc_auc_score(labels, scores.astype(np.float32))
    maps = torch.from_numpy(scores.astype(np.float32)).reshape(64, 64)  # (H, W)
    masks = torch.from_numpy(labels.astype(np.uint8)).reshape(64, 64)  # 0/1 mask
    assert auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert f1_max(maps, masks) == f1_max(scores.astype(np.float32), labels)
    assert auroc(maps.to(torch.bfloat16), masks) is not None


def test_hand_computed_auroc_and_f1_max() -> None:
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(scores, labels) == 0.75  # 0.35 beats 0.1, loses to 0.4; 0.8 beats both
    assert f1_max(scores, labels) == (0.8, 0.35)  # t=0.35: TP 2, FP 1 -> 4/5
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875  # (1/2 + 1 + 2) / 4


def test_tied_pixels_switch_together_and_highest_threshold_wins_ties() -> None:
    # t=0.5 predicts all four (TP 2, FP 2 -> 4/6); t=0.9 predicts one (TP 1 -> 2/3): equal.
    assert f1_max([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]) == (pytest.approx(2 / 3), 0.9)


def test_degenerate_cases() -> None:
    assert auroc([0.1, 0.2], [0, 0]) is None
    assert auroc([0.1, 0.2], [1, 1]) is None
    assert auroc([], []) is None
    assert auroc(np.full(10, 0.3), np.arange(10) % 2) == 0.5  # all tied
    assert f1_max([0.1, 0.2], [0, 0]) == (None, None)
    assert f1_max([0.2, 0.7], [1, 1]) == (1.0, 0.2)  # no negatives: predict everything
    assert f1_max(np.full(4, 0.3), [1, 0, 0, 0]) == (pytest.approx(0.4), pytest.approx(0.3))
    assert roc_curve_points([0.1, 0.2], [0, 0]) is None
    with pytest.raises(ValueError, match="differ in size"):
        auroc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [1, 0])


def test_perfect_and_inverted_separation() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert f1_max(scores, labels) == (1.0, 0.7)


def test_roc_curve_points_exact_when_small_and_bounded_when_large() -> None:
    scores, labels = _tied_data(5, 500, 0.3)
    fpr, tpr = roc_curve_points(scores, labels)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)

    rng = np.random.default_rng(6)
    labels = rng.random(100_000) < 0.3
    scores = rng.random(100_000) + 0.5 * labels  # all distinct: ~100k vertices
    fpr, tpr = roc_curve_points(scores, labels, max_points=200)
    assert 100 < fpr.size <= 200
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=2e-3)


# --- streaming histogram ------------------------------------------------------------------------


def test_histogram_is_exact_on_quantised_scores() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(30_000) < 0.1
    scores = (np.clip(rng.normal(100 + 60 * labels, 40), 0, 255).astype(np.uint8)) / 255
    hist = PixelScoreHistogram(bins=256).update(scores, labels)
    assert hist.auroc() == pytest.approx(auroc(scores, labels), abs=1e-12)
    f1, t = hist.f1_max()
    exact_f1, exact_t = f1_max(scores, labels)
    assert f1 == pytest.approx(exact_f1, abs=1e-12)
    assert exact_t - 1 / 255 < t <= exact_t  # a bin edge giving the same partition
    assert _f1_at(scores, labels, t) == pytest.approx(exact_f1, abs=1e-12)


def test_histogram_streaming_is_within_its_bound_and_1e3_of_exact() -> None:
    rng = np.random.default_rng(8)
    labels = rng.random(400_000) < 0.05
    scores = np.clip(rng.normal(0.35 + 0.25 * labels, 0.15), 0, 1).astype(np.float32)
    hist = PixelScoreHistogram()
    for chunk_scores, chunk_labels in zip(
        np.array_split(scores, 7), np.array_split(labels, 7), strict=True
    ):
        hist.update(chunk_scores, chunk_labels)  # one "image" at a time
    assert (hist.n_pos, hist.n_neg) == (labels.sum(), (~labels).sum())
    exact_auroc = auroc(scores, labels)
    assert abs(hist.auroc() - exact_auroc) <= hist.auroc_error_bound() <= 1e-3
    exact_f1, _ = f1_max(scores, labels)
    f1, t = hist.f1_max()
    assert 0 <= exact_f1 - f1 <= hist.f1_max_error_bound() <= 1e-3  # a lower bound
    assert _f1_at(scores, labels, t) == pytest.approx(f1, abs=1e-9)  # f1 is real at edge t


def test_histogram_merge_equals_single_pass_and_checks_binning() -> None:
    scores, labels = _tied_data(9, 10_000, 0.3)
    whole = PixelScoreHistogram(bins=100).update(scores, labels)
    a = PixelScoreHistogram(bins=100).update(scores[:3_000], labels[:3_000])
    b = PixelScoreHistogram(bins=100).update(scores[3_000:], labels[3_000:])
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.pos, whole.pos)
    np.testing.assert_array_equal(merged.neg, whole.neg)
    assert merged.auroc() == whole.auroc()
    with pytest.raises(ValueError, match="different binning"):
        a.merge(PixelScoreHistogram(bins=50))


def test_histogram_degenerate_and_out_of_range() -> None:
    hist = PixelScoreHistogram()
    assert hist.auroc() is None and hist.f1_max() == (None, None)
    hist.update(torch.tensor([-0.5, 0.2, 1.5]), torch.tensor([False, False, True]))
    assert hist.n_clipped == 2
    assert hist.auroc() == 1.0
    with pytest.raises(ValueError, match="hi > lo"):
        PixelScoreHistogram(lo=1.0, hi=1.0)


# --- classification ----------------------------------------------------------------------------

Y_TRUE = ["good", "good", "good", "particle", "particle", "scratch"]
Y_PRED = ["good", "good", "particle", "particle", "scratch", "scratch"]


def test_classification_metrics_hand_computed() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, ["good", "particle", "scratch"])
    # confusion (rows true): good 2 1 0 / particle 0 1 1 / scratch 0 0 1
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)  # 2/3
    assert m["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # 13/18
    assert m["f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)  # 59/90
    assert m["per_class"]["good"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["labels"] == ["good", "particle", "scratch"]
    assert all(isinstance(m[key], float) for key in ("accuracy", "precision", "recall", "f1"))


def test_classification_metrics_average_over_all_k_classes() -> None:
    # "bridge" never occurs: its precision / recall / F1 count as 0 in the macro averages.
    m = classification_metrics(Y_TRUE, Y_PRED, ["good", "particle", "scratch", "bridge"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(13 / 24)
    assert m["f1"] == pytest.approx(59 / 120)
    assert m["per_class"]["bridge"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]


def test_classification_metrics_empty_and_invalid() -> None:
    m = classification_metrics([], [], [0, 1])
    assert m["accuracy"] is None and m["f1"] is None
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
    assert m["per_class"]["1"]["support"] == 0
    with pytest.raises(ValueError, match="distinct"):
        classification_metrics([0], [0], [0, 0])
