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
from scipy.signal import lfilter

from semclip.synth.patterns import Scene

_STEP_EDGE = 1.0 / np.sqrt(2.0 * np.pi)  # gradient peak of a unit step blurred with sigma 1


NOISE_KINDS = ("white", "pink", "scan", "correlated")


@dataclass(frozen=True)
class ImagingSpec:
    """Ranges that one tool's imaging conditions are drawn from (lengths in px of a 256 image).

    Each pair is a uniform (low, high) range; probabilities are per image. The defaults are the
    original generator's: bright SE edges, white shot noise, mild blur, no drift.
    """

    edge_gain: tuple[float, float] = (0.25, 0.5)  # brightness added at a full-height edge
    dark_edge_prob: float = 0.0  # chance that edges come out dark (BSE/in-lens-like contrast)
    edge_sigma: tuple[float, float] = (0.8, 1.4)  # width of the edge effect
    material_gain: tuple[float, float] = (1.0, 1.0)  # multiplies feature/space grey contrast
    invert_prob: float = 0.0  # chance of inverted material polarity (features darker)
    tilt_gain: tuple[float, float] = (0.02, 0.08)  # one-sided detector shading
    blur: tuple[float, float] = (0.5, 1.5)  # focus blur sigma
    astigmatism: tuple[float, float] = (1.0, 1.0)  # sigma_x / sigma_y, drawn log-uniformly
    charge_ramp: tuple[float, float] = (0.0, 0.12)  # smooth charging ramp amplitude
    charge_blob: tuple[float, float] = (-0.06, 0.1)  # broad charging halo amplitude
    charge_tail: tuple[float, float] = (0.0, 0.0)  # scan-direction smear behind features
    dose: tuple[float, float] = (60.0, 300.0)  # electrons per pixel at signal 1 (shot noise)
    read_noise: tuple[float, float] = (0.005, 0.02)  # detector noise std
    noise: tuple[tuple[str, float], ...] = (("white", 1.0),)  # (kind, weight), see NOISE_KINDS
    pink_slope: tuple[float, float] = (1.0, 2.0)  # alpha of the 1/f^alpha power spectrum
    noise_corr: tuple[float, float] = (0.7, 1.8)  # correlation length along the scan (px)
    line_noise: tuple[float, float] = (0.0, 0.025)  # per-scan-line offset std
    jitter: tuple[float, float] = (0.0, 0.0)  # per-scan-line x shift std (px)
    drift: tuple[float, float] = (0.0, 0.0)  # x shear from first to last line (px, +-)
    zoom: tuple[float, float] = (1.0, 1.0)  # magnification relative to the classic recipe
    contrast: tuple[float, float] = (0.85, 1.3)  # operator contrast
    brightness: tuple[float, float] = (-0.06, 0.08)  # operator brightness


CLASSIC_IMAGING = ImagingSpec()


@dataclass(frozen=True)
class SemParams:
    """One acquisition's imaging conditions, drawn once per image."""

    edge_gain: float  # brightness added at a full-height edge (SE edge effect; < 0: dark edges)
    edge_sigma: float  # width of the edge effect in pixels (interaction volume)
    tilt_gain: float  # one-sided shading from the detector's position (topography contrast)
    detector_angle: float  # direction of the in-lens/ET detector in radians
    blur_sigma: float  # focus blur in pixels (along y)
    charge_ramp: float  # amplitude of the smooth charging ramp
    charge_angle: float  # direction of that ramp in radians
    charge_blob: float  # amplitude of a local charging halo
    dose: float  # electrons per pixel at signal 1.0 (sets shot noise)
    read_noise: float  # detector/amplifier noise std
    line_noise: float  # std of per-scan-line offsets
    contrast: float  # operator contrast setting
    brightness: float  # operator brightness setting
    blur_x: float = -1.0  # focus blur along x (astigmatism); < 0 = same as blur_sigma
    material_gain: float = 1.0  # multiplies the feature/space grey contrast
    inverted: bool = False  # features darker than the space between them
    charge_tail: float = 0.0  # scan-direction smear (AC-coupled amplifier, charging)
    noise_kind: str = "white"  # spectrum of the pixel noise, one of NOISE_KINDS
    pink_slope: float = 1.0  # alpha of 1/f^alpha when noise_kind is pink
    noise_corr: float = 1.0  # correlation length along x when noise_kind is correlated
    jitter: float = 0.0  # per-scan-line x shift std (px)
    drift: float = 0.0  # x shear from first to last scan line (px)
    zoom: float = 1.0  # magnification relative to the classic recipe (patterns scale by it)
    scan_seed: int = 0  # seeds the per-line jitter so that optics() stays deterministic


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_params(
    rng: np.random.Generator, scale: float, spec: ImagingSpec = CLASSIC_IMAGING
) -> SemParams:
    """Draw imaging conditions from ``spec`` (default: the classic review-tool ranges)."""
    old = [  # the original generator's draws first, in its order: classic stays byte-identical
        _draw(rng, bounds) * k
        for bounds, k in (
            (spec.edge_gain, 1.0),
            (spec.edge_sigma, scale),
            (spec.tilt_gain, 1.0),
            ((0, 2 * np.pi), 1.0),
            (spec.blur, scale),
            (spec.charge_ramp, 1.0),
            ((0, 2 * np.pi), 1.0),
            (spec.charge_blob, 1.0),
            (spec.dose, 1.0),
            (spec.read_noise, 1.0),
            (spec.line_noise, 1.0),
            (spec.contrast, 1.0),
            (spec.brightness, 1.0),
        )
    ]
    edge, edge_sigma, tilt, angle, blur, ramp, ramp_angle, blob, dose, read, line = old[:11]
    astig = float(np.exp(rng.uniform(*np.log(spec.astigmatism))))
    kinds, weights = zip(*spec.noise, strict=True)
    p = np.asarray(weights, float) / sum(weights)
    return SemParams(
        edge_gain=edge * (-1.0 if rng.random() < spec.dark_edge_prob else 1.0),
        edge_sigma=edge_sigma,
        tilt_gain=tilt,
        detector_angle=angle,
        blur_sigma=blur,
        charge_ramp=ramp,
        charge_angle=ramp_angle,
        charge_blob=blob,
        dose=dose,
        read_noise=read,
        line_noise=line,
        contrast=old[11],
        brightness=old[12],
        blur_x=blur * astig,
        material_gain=_draw(rng, spec.material_gain),
        inverted=bool(rng.random() < spec.invert_prob),
        charge_tail=_draw(rng, spec.charge_tail),
        noise_kind=str(kinds[int(rng.choice(len(kinds), p=p))]),
        pink_slope=_draw(rng, spec.pink_slope),
        noise_corr=_draw(rng, spec.noise_corr) * scale,
        jitter=_draw(rng, spec.jitter) * scale,
        drift=_draw(rng, spec.drift) * scale * rng.choice([-1.0, 1.0]),
        zoom=_draw(rng, spec.zoom),
        scan_seed=int(rng.integers(2**31)),
    )


def surface_signal(scene: Scene, params: SemParams) -> np.ndarray:
    """Noise-free SE yield of the scene, (H, W) float32, roughly in [0, 1].

    Foreign material (paint) hides the pattern under it, including the pattern's edges; the edge
    effect is driven by the gradient of total surface height, saturating like real SE yield.
    """
    fg, bg = scene.feature_level, scene.background_level
    if params.inverted:  # the space carries the features' grey level and vice versa
        fg, bg = bg, fg
    fg = bg + (fg - bg) * params.material_gain
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


def optics(signal: np.ndarray, params: SemParams, *, blur: bool = True) -> np.ndarray:
    """Deterministic column and scan effects: (astigmatic) blur, charging smear, drift/jitter.

    These move or smear signal, so defect masks are measured on the output with ``blur=False``:
    the mask follows the defect wherever smear and scan shifts put it, and keeps the sharp
    outline a labeller draws rather than the blur's faint halo.
    """
    out = signal
    if blur:
        blur_x = params.blur_sigma if params.blur_x < 0 else params.blur_x
        out = ndimage.gaussian_filter(signal, (params.blur_sigma, blur_x))
    if params.charge_tail > 0:  # AC-coupled detector: overshoot and tail after each edge
        a, start = 0.85, out[:, :1]  # the smear decays over ~6 px; local, like the defects
        trail = lfilter([1 - a], [1, -a], out - start, axis=1) + start
        out = out + params.charge_tail * (trail.astype(np.float32) - out)
    if params.jitter > 0 or params.drift != 0:
        h, w = out.shape
        rng = np.random.default_rng(params.scan_seed)
        walk = np.cumsum(rng.standard_normal(h)) / np.sqrt(h)  # slow random walk of the scan
        shift = params.drift * np.linspace(-0.5, 0.5, h) + params.jitter * (
            0.5 * walk + rng.standard_normal(h)
        )
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = ndimage.map_coordinates(
            out, [yy, xx - shift[:, None].astype(np.float32)], order=1, mode="nearest"
        )
    return out.astype(np.float32, copy=False)


def _noise_field(params: SemParams, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance pixel noise with the spectrum of ``params.noise_kind``, (H, W) float32."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if params.noise_kind == "pink":  # 1/f^alpha power spectrum: blotchy, low-frequency noise
        fy = np.fft.fftfreq(shape[0])[:, None]
        fx = np.fft.rfftfreq(shape[1])[None, :]
        f = np.hypot(fy, fx)
        f[0, 0] = 1.0
        spectrum = np.fft.rfft2(white) * f ** (-params.pink_slope / 2)
        spectrum[0, 0] = 0.0
        field = np.fft.irfft2(spectrum, s=shape).astype(np.float32)
        field = 0.8 * field / (field.std() + 1e-9) + 0.6 * white  # plus a little shot noise
    elif params.noise_kind == "correlated":  # finite detector bandwidth along the scan line
        field = ndimage.gaussian_filter1d(white, params.noise_corr, axis=1)
    else:
        return white
    return field / (field.std() + 1e-9)


def detect(signal: np.ndarray, params: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Detector side of :func:`acquire` on an :func:`optics` output: charging, noise, contrast."""
    h, w = signal.shape
    charged = np.clip(signal + _charging((h, w), params, rng), 0.0, None)
    # Shot (Poisson, Gaussian approximation) and read noise are independent: one field for both.
    sigma = np.sqrt(charged / params.dose + params.read_noise**2)  # (H, W)
    noise = sigma * _noise_field(params, (h, w), rng)
    line = params.line_noise * (3.0 if params.noise_kind == "scan" else 1.0)
    rows = line * rng.standard_normal(h).astype(np.float32)
    rows = (rows + np.roll(rows, 1)) / np.sqrt(2.0)  # neighbouring lines share drift
    noisy = charged + noise + rows[:, None]
    return np.clip((noisy - 0.4) * params.contrast + 0.4 + params.brightness, 0.0, 1.0)


def acquire(signal: np.ndarray, params: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Image the SE signal: optics (blur, smear, scan shifts), then charging, noise, contrast."""
    return detect(optics(signal, params), params, rng)


def quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map a [0, 1] float image to uint8 or uint16 like the tool's ADC."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(dtype)
