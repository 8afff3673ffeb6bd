"""Pure map operations: feature surgery closed form, smoothing, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semclip.maps import (
    bilinear_matrix,
    gaussian_smooth,
    resize_threshold,
    surgery_defect_map,
    surgery_similarity,
    vanilla_class_probs,
)


def explicit_surgery(f: torch.Tensor, f_cls: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The paper's form, materialising the (B, P, K, D) multiplied feature."""
    f = F.normalize(f, dim=-1)
    t = F.normalize(text, dim=-1)
    w = (F.normalize(f_cls, dim=-1) @ t.T).softmax(-1)
    w = w / w.mean(-1, keepdim=True)  # (B, K)
    multiplied = f[:, :, None, :] * t[None, None] * w[:, None, :, None]  # (B, P, K, D)
    redundant = multiplied.mean(dim=2, keepdim=True)
    return (multiplied - redundant).sum(-1)


def test_surgery_closed_form_equals_explicit_form() -> None:
    torch.manual_seed(0)
    f, f_cls, text = torch.randn(3, 49, 32), torch.randn(3, 32), torch.randn(5, 32)
    sim = surgery_similarity(f, f_cls, text)
    torch.testing.assert_close(sim, explicit_surgery(f, f_cls, text), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sim.sum(-1), torch.zeros(3, 49), atol=1e-5, rtol=0)


def test_surgery_defect_map_is_one_minus_good_probability() -> None:
    sim = torch.tensor([[[0.05, -0.05], [-0.05, 0.05]]])  # two patches, classes good/defect
    out = surgery_defect_map(sim, good_index=0)
    expected = 1 - torch.softmax(100 * sim, dim=-1)[..., 0]
    torch.testing.assert_close(out, expected)
    assert out[0, 0] < 0.01 and out[0, 1] > 0.99


def test_vanilla_probabilities_are_a_distribution_at_full_size() -> None:
    z, text = torch.randn(2, 16, 8), torch.randn(3, 8)
    probs = vanilla_class_probs(z, text, size=20)
    assert probs.shape == (2, 3, 20, 20)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 20, 20))


def test_gaussian_smoothing_keeps_constants_and_spreads_a_peak() -> None:
    flat = torch.full((1, 32, 32), 0.7)
    torch.testing.assert_close(gaussian_smooth(flat, 2.0), flat)
    peak = torch.zeros(1, 33, 33)
    peak[0, 16, 16] = 1.0
    out = gaussian_smooth(peak, 2.0)
    assert out.shape == peak.shape
    assert out[0, 16, 16] < 0.1 and abs(float(out.sum()) - 1.0) < 1e-4
    assert torch.allclose(out[0], out[0].T, atol=1e-6)  # isotropic
    assert torch.equal(gaussian_smooth(peak, 0.0), peak)


@pytest.mark.parametrize(("n_in", "n_out"), [(15, 240), (240, 1000), (64, 37), (1, 9), (8, 8)])
def test_bilinear_matrix_matches_interpolate(n_in: int, n_out: int) -> None:
    x = torch.randn(n_in)
    expected = F.interpolate(
        x[None, None, :, None], size=(n_out, 1), mode="bilinear", align_corners=False
    )[0, 0, :, 0]
    got = torch.from_numpy(bilinear_matrix(n_in, n_out)) @ x
    # torch computes source coordinates in float32, the matrix in float64
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_resize_threshold_in_blocks_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    score = rng.random((24, 24)).astype(np.float32)
    full = F.interpolate(
        torch.from_numpy(score)[None, None], size=(301, 517), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    got = resize_threshold(score, (301, 517), 0.6, chunk_rows=64)
    assert got.shape == (301, 517) and got.dtype == bool
    # identical except where float rounding sits exactly on the threshold
    assert (got != (full > 0.6)).sum() <= 3
