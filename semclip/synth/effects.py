"""SEM imaging model: secondary-electron contrast, then the column and detector's artefacts.

Split in two deterministic steps so a defect's mask can be measured on the noise-free signal:
:func:`surface_signal` (scene -> SE yield: material contrast, bright edges, detector shading) and
:func:`acquire` (focus blur, charging, drift, shot and scan-line noise). Shot noise uses the
Gaussian approximation of Poisson statistics: it draws one standard normal per pixel whatever the
signal, so adding a defect changes the noise field nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from semclip.synth.patterns import Scene

_STEP_EDGE = 1.0 / np.sqrt(2.0 * np.pi)  # gradient peak of a unit step blurred with sigma 1


@dataclass(frozen=True)
class SemParams:
    """One acquisition's imaging conditions, drawn once per image."""

    edge_gain: float  # brightness added at a full-height edge (SE edge effect)
    edge_sigma: float  # width of the edge effect in pixels (interaction volume)
    tilt_gain: float  # one-sided shading from the detector's position (topography contrast)
    detector_angle: float  # direction of the in-lens/ET detector in radians
    blur_sigma: float  # focus blur in pixels
    charge_ramp: float  # amplitude of the smooth charging ramp
    charge_angle: float  # direction of that ramp in radians
    charge_blob: float  # amplitude of a local charging halo
    dose: float  # electrons per pixel at signal 1.0 (sets shot noise)
    read_noise: float  # detector/amplifier noise std
    line_noise: float  # std of per-scan-line offsets
    contrast: float  # operator contrast setting
    brightness: float  # operator brightness setting


def draw_params(rng: np.random.Generator, scale: float) -> SemParams:
    """Draw imaging conditions that span what review tools produce across recipes."""
    return SemParams(
        edge_gain=float(rng.uniform(0.25, 0.5)),
        edge_sigma=float(rng.uniform(0.8, 1.4) * scale),
        tilt_gain=float(rng.uniform(0.02, 0.08)),
        detector_angle=float(rng.uniform(0, 2 * np.pi)),
        blur_sigma=float(rng.uniform(0.5, 1.5) * scale),
        charge_ramp=float(rng.uniform(0.0, 0.12)),
        charge_angle=float(rng.uniform(0, 2 * np.pi)),
        charge_blob=float(rng.uniform(-0.06, 0.1)),
        dose=float(rng.uniform(60.0, 300.0)),
        read_noise=float(rng.uniform(0.005, 0.02)),
        line_noise=float(rng.uniform(0.0, 0.025)),
        contrast=float(rng.uniform(0.85, 1.3)),
        brightness=float(rng.uniform(-0.06, 0.08)),
    )


def surface_signal(scene: Scene, params: SemParams) -> np.ndarray:
    """Noise-free SE yield of the scene, (H, W) float32, roughly in [0, 1].

    Foreign material (paint) hides the pattern under it, including the pattern's edges; the edge
    effect is driven by the gradient of total surface height, saturating like real SE yield.
    """
    fg, bg = scene.feature_level, scene.background_level
    base = bg + (fg - bg) * scene.material + scene.texture * scene.material  # (H, W)
    covered = base * (1.0 - scene.paint) + scene.paint * scene.paint_level
    height = scene.material * (1.0 - scene.paint) + scene.relief  # (H, W) in step units
    dy = ndimage.gaussian_filter(height, params.edge_sigma, order=(1, 0))
    dx = ndimage.gaussian_filter(height, params.edge_sigma, order=(0, 1))
    slope = np.hypot(dy, dx)
    edges = params.edge_gain * np.tanh(2.0 * slope * params.edge_sigma / _STEP_EDGE)
    toward = np.cos(params.detector_angle) * dx + np.sin(params.detector_angle) * dy
    shade = params.tilt_gain * np.tanh(toward * params.edge_sigma / _STEP_EDGE)
    return (covered + edges + shade + scene.offset).astype(np.float32)


def surface_signal_update(
    clean: np.ndarray, before: Scene, after: Scene, params: SemParams
) -> np.ndarray:
    """Signal of ``after`` given ``clean`` = signal of ``before``, recomputing only what changed.

    A defect edits a small part of the scene; filters reach ``4 sigma`` so the signal can only
    change within that distance of an edited pixel, and needs as much context again around it.
    """
    edited = np.zeros(clean.shape, bool)
    for name in ("material", "texture", "relief", "paint", "paint_level", "offset"):
        edited |= getattr(before, name) != getattr(after, name)
    if not edited.any():
        return clean.copy()
    reach = int(np.ceil(4 * params.edge_sigma)) + 1
    rows, cols = np.flatnonzero(edited.any(axis=1)), np.flatnonzero(edited.any(axis=0))
    h, w = clean.shape
    out_y = slice(max(0, rows[0] - reach), min(h, rows[-1] + 1 + reach))  # may change
    out_x = slice(max(0, cols[0] - reach), min(w, cols[-1] + 1 + reach))
    ctx_y = slice(max(0, out_y.start - reach), min(h, out_y.stop + reach))  # context it reads
    ctx_x = slice(max(0, out_x.start - reach), min(w, out_x.stop + reach))
    crop = after.crop((ctx_y, ctx_x))
    local = surface_signal(crop, params)
    signal = clean.copy()
    signal[out_y, out_x] = local[
        out_y.start - ctx_y.start : out_y.stop - ctx_y.start,
        out_x.start - ctx_x.start : out_x.stop - ctx_x.start,
    ]
    return signal


def _charging(shape: tuple[int, int], params: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Smooth low-frequency brightness field: a linear ramp plus one broad halo, (H, W)."""
    h, w = shape
    y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ramp = params.charge_ramp * (np.cos(params.charge_angle) * x + np.sin(params.charge_angle) * y)
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    spread = rng.uniform(0.25, 0.6)
    blob = params.charge_blob * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * spread**2))
    return ramp + blob


def acquire(signal: np.ndarray, params: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Image the SE signal: blur, charging, shot/read/scan-line noise, contrast; -> [0, 1] float."""
    h, w = signal.shape
    blurred = ndimage.gaussian_filter(signal, params.blur_sigma)
    charged = np.clip(blurred + _charging((h, w), params, rng), 0.0, None)
    # Shot (Poisson, Gaussian approximation) and read noise are independent: one draw for both.
    sigma = np.sqrt(charged / params.dose + params.read_noise**2)  # (H, W)
    noise = sigma * rng.standard_normal((h, w), dtype=np.float32)
    rows = params.line_noise * rng.standard_normal(h).astype(np.float32)
    rows = (rows + np.roll(rows, 1)) / np.sqrt(2.0)  # neighbouring lines share drift
    noisy = charged + noise + rows[:, None]
    return np.clip((noisy - 0.4) * params.contrast + 0.4 + params.brightness, 0.0, 1.0)


def quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map a [0, 1] float image to uint8 or uint16 like the tool's ADC."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(dtype)
