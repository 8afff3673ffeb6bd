"""Pixel-level scores at each image's original resolution, pooled over a test set.

The protocol scores all pixels of all test images (good ones included, all negative) at their
original size: tens of millions of pixels for a real set. A pool keeps them exactly while the
set is small (metrics then equal scikit-learn's) and as a fine histogram otherwise (fixed
memory; the AUROC error bound is reported), decided once per run from the known pixel count.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from semclip.data.databar import DatabarCrop
from semclip.maps import bilinear_matrix
from semclip.metrics import PixelScoreHistogram, auroc, f1_max, roc_curve_points

HISTOGRAM_BINS = 2**16  # AUROC error about 1 / (2 · bins) for spread scores: < 1e-5
EXACT_PIXEL_LIMIT = 2**24  # exact pools up to ~16.8 M pixels (~84 MB of scores + labels)


@lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Cached 1-D bilinear weights: most test images share a handful of sizes."""
    return bilinear_matrix(n_in, n_out)


def full_resolution(
    score_map: np.ndarray, full_shape: tuple[int, int], databar: DatabarCrop
) -> np.ndarray:
    """(S, S) map of the databar-cropped image → (H, W) float32, zero on the databar rows.

    The same resize as `ImageScores.full_map` and the production mask (bilinear,
    align_corners=False), so the evaluated map is the one that is thresholded in production.
    """
    height, width = full_shape
    rows = _resize_matrix(score_map.shape[0], databar.cropped_height(height))
    cols = _resize_matrix(score_map.shape[1], width)
    return databar.undo_mask(rows @ score_map.astype(np.float32) @ cols.T, full_shape)


class PixelPool:
    """Pixel scores in [0, 1] with binary labels: exact arrays, or a histogram of `bins` bins."""

    def __init__(self, exact: bool, bins: int = HISTOGRAM_BINS) -> None:
        self.exact = exact
        self.bins = bins
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._hist = None if exact else PixelScoreHistogram(bins, 0.0, 1.0)

    @property
    def n_pixels(self) -> int:
        if self._hist is not None:
            return self._hist.n_pos + self._hist.n_neg
        return int(sum(s.size for s in self._scores))

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one image's (H, W) map and its (H, W) bool ground truth."""
        if self._hist is not None:
            self._hist.update(scores, labels)
        else:
            self._scores.append(np.asarray(scores, dtype=np.float32).ravel())
            self._labels.append(np.asarray(labels, dtype=bool).ravel())

    @classmethod
    def union(cls, pools: Iterable[PixelPool]) -> PixelPool:
        """One pool holding every pixel of `pools` (same mode); arrays are shared, not copied."""
        pools = list(pools)
        exact = all(p.exact for p in pools)
        out = cls(exact, pools[0].bins if pools else HISTOGRAM_BINS)
        for pool in pools:
            if out._hist is not None:
                out._hist.merge(pool._as_histogram())
            else:
                out._scores += pool._scores
                out._labels += pool._labels
        return out

    def auroc(self) -> float | None:
        if self._hist is not None:
            return self._hist.auroc()
        return auroc(*self._arrays()) if self._scores else None

    def auroc_error_bound(self) -> float | None:
        """0 for exact pools; the histogram's bound otherwise."""
        return 0.0 if self._hist is None else self._hist.auroc_error_bound()

    def f1_max(self) -> float | None:
        if self._hist is not None:
            return self._hist.f1_max()[0]
        return f1_max(*self._arrays())[0] if self._scores else None

    def roc(self, max_points: int = 512) -> tuple[np.ndarray, np.ndarray] | None:
        """(fpr, tpr) for plotting; None when one class is absent."""
        if self._hist is None:
            return roc_curve_points(*self._arrays(), max_points) if self._scores else None
        pos, neg = self._hist.pos[::-1], self._hist.neg[::-1]  # high scores first
        if pos.sum() == 0 or neg.sum() == 0:
            return None
        tpr = np.r_[0.0, np.cumsum(pos) / pos.sum()]
        fpr = np.r_[0.0, np.cumsum(neg) / neg.sum()]
        keep = np.r_[True, (np.diff(tpr) > 0) | (np.diff(fpr) > 0)]
        fpr, tpr = fpr[keep], tpr[keep]
        step = max(1, len(fpr) // max_points)
        idx = np.unique(np.r_[np.arange(0, len(fpr), step), len(fpr) - 1])
        return fpr[idx], tpr[idx]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._scores), np.concatenate(self._labels)

    def _as_histogram(self) -> PixelScoreHistogram:
        if self._hist is not None:
            return self._hist
        hist = PixelScoreHistogram(self.bins, 0.0, 1.0)
        for scores, labels in zip(self._scores, self._labels, strict=True):
            hist.update(scores, labels)
        return hist
