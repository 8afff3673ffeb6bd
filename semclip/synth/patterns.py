"""Patterned wafer backgrounds: the noise-free geometry a review SEM looks at.

Every family returns a :class:`Scene` whose ``material`` map is the anti-aliased coverage of the
printed features (lines, contacts, Cu, metal shapes). Defects edit the scene and
:mod:`semclip.synth.effects` turns it into an SEM signal, so geometry and imaging stay apart.
Lengths are drawn in pixels of a 256 px review image and multiplied by ``scale`` so a larger
render shows the same field of view at a finer sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

PatternFn = Callable[[np.random.Generator, int, int, float], "Scene"]


@dataclass(frozen=True)
class Scene:
    """Noise-free wafer surface that defects edit and the imaging model renders."""

    material: np.ndarray  # (H, W) float32 in [0, 1]: coverage of the patterned features
    texture: np.ndarray  # (H, W) float32 grey offset inside features (Cu grain contrast)
    relief: np.ndarray  # (H, W) float32 extra surface height from defects (drives SE edges)
    paint: np.ndarray  # (H, W) float32 in [0, 1]: opacity of foreign material on the surface
    paint_level: np.ndarray  # (H, W) float32 grey level of that foreign material
    offset: np.ndarray  # (H, W) float32 additive signal (shadows, sub-surface contrast)
    feature_level: float  # grey level of the features before edge effects
    background_level: float  # grey level between the features
    pattern: str  # pattern family name, one of PATTERNS
    pitch: float  # typical feature pitch in pixels (sizes defects sensibly)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the scene."""
        return self.material.shape  # type: ignore[return-value]

    def crop(self, where: tuple[slice, slice]) -> Scene:
        """The scene inside a window (for recomputing the signal near a defect only)."""
        return replace(
            self,
            material=self.material[where],
            texture=self.texture[where],
            relief=self.relief[where],
            paint=self.paint[where],
            paint_level=self.paint_level[where],
            offset=self.offset[where],
        )

    def with_material(self, material: np.ndarray) -> Scene:
        """Copy with new feature geometry (bridges, film bulges)."""
        return replace(self, material=material.astype(np.float32, copy=False))

    def with_relief(self, relief: np.ndarray) -> Scene:
        """Copy with extra surface height added (pits, bumps, grooves)."""
        return replace(self, relief=self.relief + relief.astype(np.float32, copy=False))

    def with_offset(self, offset: np.ndarray) -> Scene:
        """Copy with extra additive signal (shadows, buried contrast)."""
        return replace(self, offset=self.offset + offset.astype(np.float32, copy=False))

    def with_paint(self, alpha: np.ndarray, level: np.ndarray | float) -> Scene:
        """Copy with foreign material composited *over* the existing paint (alpha blending)."""
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False)
        total = alpha + self.paint * (1.0 - alpha)
        mixed = alpha * level + self.paint * (1.0 - alpha) * self.paint_level
        level_map = np.divide(mixed, total, out=np.zeros_like(total), where=total > 1e-6)
        return replace(self, paint=total, paint_level=level_map.astype(np.float32))


def _scene(
    material: np.ndarray,
    rng: np.random.Generator,
    pattern: str,
    pitch: float,
    *,
    texture: np.ndarray | None = None,
    dark_features: bool = False,
    contrast_range: tuple[float, float] = (0.06, 0.24),
) -> Scene:
    """Wrap a coverage map with empty defect layers and random material grey levels."""
    zeros = np.zeros(material.shape, np.float32)
    background = float(rng.uniform(0.14, 0.32))
    contrast = float(rng.uniform(*contrast_range))
    feature = background - contrast * 0.9 if dark_features else background + contrast
    return Scene(
        material=np.clip(material, 0.0, 1.0).astype(np.float32),
        texture=zeros.copy() if texture is None else texture.astype(np.float32),
        relief=zeros.copy(),
        paint=zeros.copy(),
        paint_level=zeros.copy(),
        offset=zeros,
        feature_level=max(feature, 0.04),
        background_level=background,
        pattern=pattern,
        pitch=pitch,
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation (roughness, blotches)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-9)


def _lines(
    rng: np.random.Generator, along: int, across: int, pitch: float, duty: float, ler: float
) -> np.ndarray:
    """Horizontal lines with line-edge roughness, shape (across, along), coverage in [0, 1].

    Each edge of each line gets its own correlated roughness so the lines wiggle independently,
    like resist lines after etch.
    """
    n_lines = int(across / pitch) + 3
    width = duty * pitch
    corr = rng.uniform(2.0, 6.0)
    top = ler * _smooth_noise(rng, (n_lines, along), (0, corr))  # (L, X)
    bottom = ler * _smooth_noise(rng, (n_lines, along), (0, corr))
    shift = rng.uniform(0, pitch)
    y = np.arange(across, dtype=np.float32)[:, None] + shift  # (Y, 1)
    k = np.floor(y / pitch).astype(int)  # (Y, 1) index of the line cell
    u = y - k * pitch  # position inside the cell
    cols = np.arange(along)[None, :]
    lower = top[k, cols]  # (Y, X)
    upper = width + bottom[k, cols]
    return np.clip(np.minimum(u - lower, upper - u) + 0.5, 0.0, 1.0)


def line_h(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Horizontal line/space array with line-edge roughness."""
    pitch = rng.uniform(11.0, 28.0) * scale
    material = _lines(rng, w, h, pitch, rng.uniform(0.38, 0.62), rng.uniform(0.4, 1.1) * scale)
    return _scene(material, rng, "line_h", pitch)


def line_v(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Vertical line/space array with line-edge roughness."""
    pitch = rng.uniform(11.0, 28.0) * scale
    material = _lines(rng, h, w, pitch, rng.uniform(0.38, 0.62), rng.uniform(0.4, 1.1) * scale).T
    return _scene(np.ascontiguousarray(material), rng, "line_v", pitch)


def contacts(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Contact/via array: square or staggered grid of slightly irregular round holes or plugs."""
    pitch = rng.uniform(14.0, 30.0) * scale
    pitch_x = pitch * rng.uniform(0.9, 1.4)
    staggered = rng.random() < 0.4
    radius = pitch * rng.uniform(0.22, 0.34)
    oy, ox = rng.uniform(0, pitch), rng.uniform(0, pitch_x)
    rows, cols = int(h / pitch) + 3, int(w / pitch_x) + 3
    jitter = rng.normal(0, 0.06 * radius, (2, rows, cols))
    r_cell = radius * (1 + rng.normal(0, 0.06, (rows, cols)))
    ecc = 1 + rng.normal(0, 0.05, (rows, cols))
    y = np.arange(h, dtype=np.float32)[:, None] + oy
    x = np.arange(w, dtype=np.float32)[None, :] + ox
    row = np.clip(np.round(y / pitch).astype(int), 0, rows - 1)  # (H, 1)
    x_shift = np.where(row % 2 == 1, 0.5 * pitch_x, 0.0) if staggered else np.zeros_like(y)
    col = np.clip(np.round((x - x_shift) / pitch_x).astype(int), 0, cols - 1)  # (H, W)
    dy = y - row * pitch - jitter[0][row, col]
    dx = (x - x_shift - col * pitch_x - jitter[1][row, col]) * ecc[row, col]
    material = np.clip(r_cell[row, col] - np.hypot(dy, dx) + 0.5, 0.0, 1.0)
    return _scene(material, rng, "contacts", pitch, dark_features=rng.random() < 0.5)


def _voronoi_grains(
    rng: np.random.Generator, h: int, w: int, grain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Polycrystalline grain contrast: (per-grain grey tone, soft grain-boundary map), (H, W)."""
    n_seeds = max(4, int(h * w / grain**2))
    seeds = np.ones((h, w), bool)
    seeds[rng.integers(0, h, n_seeds), rng.integers(0, w, n_seeds)] = False
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    cell = iy * w + ix  # (H, W) id of the nearest seed
    tone = rng.normal(0.0, 1.0, h * w).astype(np.float32)[cell]
    boundary = (np.diff(cell, axis=0, prepend=cell[:1]) != 0) | (
        np.diff(cell, axis=1, prepend=cell[:, :1]) != 0
    )
    return tone, ndimage.gaussian_filter(boundary.astype(np.float32), 0.6)


def cu_grain(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Cu damascene lines after CMP: wide Cu lines with polycrystalline grain contrast."""
    pitch = rng.uniform(26.0, 60.0) * scale
    duty, ler = rng.uniform(0.5, 0.75), rng.uniform(0.2, 0.6) * scale
    if rng.random() < 0.5:
        material = _lines(rng, w, h, pitch, duty, ler)
    else:
        material = np.ascontiguousarray(_lines(rng, h, w, pitch, duty, ler).T)
    tone, boundary = _voronoi_grains(rng, h, w, rng.uniform(6.0, 14.0) * scale)
    texture = rng.uniform(0.03, 0.07) * tone - rng.uniform(0.05, 0.12) * boundary
    return _scene(material, rng, "cu_grain", pitch, texture=texture, contrast_range=(0.15, 0.3))


def _track(rng: np.random.Generator, length: int) -> np.ndarray:
    """One routing track on the coarse grid: alternating metal segments and line-end gaps."""
    pieces = np.where(
        np.arange(length) % 2 == 0, rng.integers(4, 40, length), rng.integers(1, 4, length)
    )
    bounds = np.cumsum(pieces) - rng.integers(0, 10)
    return np.searchsorted(bounds, np.arange(length), side="right") % 2 == 0


def manhattan(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Random Manhattan logic layout: routed metal tracks, line ends, jogs and pads.

    Drawn on a coarse routing grid (so spaces obey a minimum), upsampled, then corner-rounded by
    blurring and re-thresholding as lithography does.
    """
    unit = max(3, int(round(rng.uniform(5.0, 9.0) * scale)))
    gh, gw = -(-h // unit) + 1, -(-w // unit) + 1
    grid = np.zeros((gh, gw), bool)
    view = grid if rng.random() < 0.5 else grid.T  # routing direction of this layer
    tracks, length = view.shape
    for t in range(0, tracks, 2):  # odd tracks are the minimum spaces
        view[t] = _track(rng, length)
    n_jogs = int(rng.integers(3, 10))
    rows = rng.integers(0, max(1, tracks - 2), n_jogs) // 2 * 2
    cols, wide = rng.integers(0, length, n_jogs), rng.random(n_jogs) < 0.3
    for t, c, is_pad in zip(rows, cols, wide, strict=True):
        span = int(rng.integers(2, 6)) if is_pad else 1  # wide = a pad, else a one-unit jog
        view[t : t + 3, c : c + span] = True
    material = np.kron(grid, np.ones((unit, unit), np.float32))[:h, :w]
    rounded = ndimage.gaussian_filter(material, 0.2 * unit)
    material = np.clip((rounded - 0.5) * 3.0 + 0.5, 0.0, 1.0)
    return _scene(material, rng, "manhattan", 2.0 * unit)


def _lattice_dots(
    rng: np.random.Generator, h: int, w: int, pitch: float, hexagonal: bool, radius: float
) -> np.ndarray:
    """Round dots on a (possibly rotated) square or hexagonal lattice, coverage (H, W).

    Each pixel measures the distance to the four lattice points around it in lattice
    coordinates, so dots are exact on any lattice angle without per-dot loops.
    """
    angle = rng.uniform(0, np.pi / 3 if hexagonal else np.pi / 2)
    a1 = pitch * np.array([np.cos(angle), np.sin(angle)])  # (x, y) basis vectors
    turn = np.pi / 3 if hexagonal else np.pi / 2
    a2 = (
        pitch
        * rng.uniform(1.0, 1.0 if hexagonal else 1.5)
        * np.array([np.cos(angle + turn), np.sin(angle + turn)])
    )
    basis = np.stack([a1, a2], axis=1)  # (2, 2) columns are a1, a2
    inv = np.linalg.inv(basis)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x + rng.uniform(0, pitch), y + rng.uniform(0, pitch)
    u = inv[0, 0] * x + inv[0, 1] * y  # (H, W) lattice coordinates
    v = inv[1, 0] * x + inv[1, 1] * y
    best = np.full((h, w), np.inf, np.float32)
    r_cell = radius * (1 + rng.normal(0, 0.05, (97, 89)))  # per-dot size scatter, tiled
    for du in (0, 1):
        for dv in (0, 1):
            iu, iv = np.floor(u) + du, np.floor(v) + dv
            px = basis[0, 0] * iu + basis[0, 1] * iv
            py = basis[1, 0] * iu + basis[1, 1] * iv
            r = r_cell[iu.astype(int) % 97, iv.astype(int) % 89]
            best = np.minimum(best, np.hypot(x - px, y - py) - r)
    return np.clip(0.5 - best, 0.0, 1.0)


def dots(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Dense dot array (pillars, memory contacts) on a square/rectangular, slightly rotated grid."""
    pitch = rng.uniform(6.0, 16.0) * scale
    radius = pitch * rng.uniform(0.2, 0.35)
    material = _lattice_dots(rng, h, w, pitch, False, radius)
    return _scene(material, rng, "dots", pitch, dark_features=rng.random() < 0.4)


def hex_contacts(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Hexagonal close-packed contact holes at any lattice angle (DRAM storage nodes)."""
    pitch = rng.uniform(9.0, 26.0) * scale
    radius = pitch * rng.uniform(0.25, 0.4)
    material = _lattice_dots(rng, h, w, pitch, True, radius)
    return _scene(material, rng, "hex_contacts", pitch, dark_features=rng.random() < 0.7)


def diagonal(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Line/space array at an oblique angle (20-70 deg) with line-edge roughness."""
    pitch = rng.uniform(8.0, 30.0) * scale
    duty = rng.uniform(0.3, 0.65)
    angle = rng.uniform(np.deg2rad(20), np.deg2rad(70)) * rng.choice([-1.0, 1.0])
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    across = np.cos(angle) * x + np.sin(angle) * y
    wiggle = rng.uniform(0.3, 1.2) * scale * _smooth_noise(rng, (h, w), 3.0 * scale + 1)
    u = np.mod(across + wiggle + rng.uniform(0, pitch), pitch)  # position inside the cell
    width = duty * pitch
    material = np.clip(np.minimum(u, width - u) + 0.5, 0.0, 1.0) * (u < pitch - 0.5)
    return _scene(material.astype(np.float32), rng, "diagonal", pitch)


def _round_corners(material: np.ndarray, radius: float) -> np.ndarray:
    """Lithographic corner rounding: blur, then re-threshold softly."""
    rounded = ndimage.gaussian_filter(material.astype(np.float32), max(0.5, radius))
    return np.clip((rounded - 0.5) * 3.0 + 0.5, 0.0, 1.0)


def sram(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """SRAM-like bit cells: one small cell of gates and active islands, mirrored and tiled."""
    ch = max(8, int(rng.uniform(14.0, 34.0) * scale))
    cw = max(8, int(rng.uniform(18.0, 44.0) * scale))
    cell = np.zeros((ch, cw), np.float32)
    for _ in range(int(rng.integers(2, 5))):  # rectangles inside the cell
        y0, x0 = int(rng.integers(0, ch - 3)), int(rng.integers(0, cw - 3))
        y1 = min(ch - 1, y0 + int(rng.integers(2, max(3, ch // 2))))
        x1 = min(cw - 1, x0 + int(rng.integers(2, max(3, cw // 1.5))))
        cell[y0:y1, x0:x1] = 1.0
    quad = np.block([[cell, cell[:, ::-1]], [cell[::-1], cell[::-1, ::-1]]])  # mirrored 2x2
    reps = (-(-h // quad.shape[0]) + 1, -(-w // quad.shape[1]) + 1)
    tiled = np.tile(quad, reps)
    oy, ox = int(rng.integers(quad.shape[0])), int(rng.integers(quad.shape[1]))
    material = _round_corners(tiled[oy : oy + h, ox : ox + w], 0.12 * min(ch, cw))
    return _scene(material, rng, "sram", float(min(ch, cw)))


def via_chain(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Via chain test structure: staggered metal links with a bright via at each end."""
    pitch = rng.uniform(14.0, 32.0) * scale
    link = pitch * rng.uniform(1.6, 3.0)
    width = pitch * rng.uniform(0.3, 0.45)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    row = np.floor(y / pitch)
    v = y - row * pitch - pitch / 2  # across the row
    xs = x + rng.uniform(0, link) + np.where(row % 2 == 1, link / 2, 0.0)
    u = np.mod(xs, link) - link / 2  # along the link
    gap = pitch * rng.uniform(0.25, 0.4)
    half = link / 2 - gap / 2
    bar = np.clip(np.minimum(width / 2 - np.abs(v), half - np.abs(u)) + 0.5, 0.0, 1.0)
    via_r = width * rng.uniform(0.45, 0.6)
    ends = np.minimum(np.hypot(np.abs(u) - (half - via_r), v), np.inf)
    via = np.clip(via_r - ends + 0.5, 0.0, 1.0)
    material = np.maximum(bar, via)
    texture = rng.uniform(0.06, 0.14) * via  # vias image brighter than the links
    return _scene(material, rng, "via_chain", pitch, texture=texture)


def fins(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """FinFET front end: dense narrow fins under wider perpendicular gate lines."""
    fin_pitch = rng.uniform(5.0, 12.0) * scale
    gate_pitch = rng.uniform(16.0, 40.0) * scale
    fin_duty, fin_ler = rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.5) * scale
    gate_duty, gate_ler = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.8) * scale
    if rng.random() < 0.5:  # horizontal fins, vertical gates
        fin = _lines(rng, w, h, fin_pitch, fin_duty, fin_ler)
        gate = _lines(rng, h, w, gate_pitch, gate_duty, gate_ler).T
    else:
        fin = _lines(rng, h, w, fin_pitch, fin_duty, fin_ler).T
        gate = _lines(rng, w, h, gate_pitch, gate_duty, gate_ler)
    material = np.maximum(rng.uniform(0.45, 0.7) * fin, gate)
    return _scene(np.ascontiguousarray(material), rng, "fins", fin_pitch)


def trench(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Deep trench array: wide dark trenches with rounded ends in a bright film (3D NAND slits)."""
    pitch = rng.uniform(20.0, 48.0) * scale
    length = rng.uniform(2.0, 6.0) * pitch
    width = pitch * rng.uniform(0.35, 0.6)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # trenches running vertically
        y, x = x, y
    y = y + rng.uniform(0, pitch)
    row = np.floor(y / pitch)
    v = y - row * pitch - pitch / 2
    x = x + rng.uniform(0, length) + row * rng.uniform(0, length)
    u = np.mod(x, length + width) - (length + width) / 2
    capsule = np.hypot(np.maximum(np.abs(u) - (length - width) / 2, 0.0), v)  # stadium shape
    material = np.clip(width / 2 - capsule + 0.5, 0.0, 1.0)
    return _scene(material, rng, "trench", pitch, dark_features=True, contrast_range=(0.1, 0.25))


def resist(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Resist lines after develop: strong, fine line-edge roughness and random line breaks."""
    pitch = rng.uniform(8.0, 26.0) * scale
    duty, ler = rng.uniform(0.35, 0.6), rng.uniform(1.0, 2.5) * scale
    run = rng.uniform(4.0, 12.0) * scale
    if rng.random() < 0.5:
        material = _lines(rng, w, h, pitch, duty, ler)
        breaks = _smooth_noise(rng, (h, w), (0.5, run))
    else:
        material = np.ascontiguousarray(_lines(rng, h, w, pitch, duty, ler).T)
        breaks = _smooth_noise(rng, (h, w), (run, 0.5))
    material = material * np.clip((2.6 - breaks) * 2.0, 0.0, 1.0)  # occasional necks and gaps
    return _scene(material, rng, "resist", pitch, contrast_range=(0.08, 0.2))


def blank_film(rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Unpatterned film: amorphous, rough or granular surface with no printed features."""
    grain = rng.uniform(1.0, 6.0) * scale
    rough = _smooth_noise(rng, (h, w), grain) + 0.5 * _smooth_noise(rng, (h, w), 4 * grain)
    material = np.clip(0.5 + rng.uniform(0.05, 0.25) * rough, 0.0, 1.0)
    texture = rng.uniform(0.0, 0.05) * _smooth_noise(rng, (h, w), 0.7 * grain)
    pitch = float(rng.uniform(16.0, 32.0) * scale)
    return _scene(material, rng, "blank_film", pitch, texture=texture, contrast_range=(0.1, 0.3))


PATTERNS: dict[str, PatternFn] = {
    "line_h": line_h,
    "line_v": line_v,
    "contacts": contacts,
    "cu_grain": cu_grain,
    "manhattan": manhattan,
    "dots": dots,
    "hex_contacts": hex_contacts,
    "diagonal": diagonal,
    "sram": sram,
    "via_chain": via_chain,
    "fins": fins,
    "trench": trench,
    "resist": resist,
    "blank_film": blank_film,
}
# The original five families: the "classic" style's scenes.
CLASSIC_PATTERNS: tuple[str, ...] = ("line_h", "line_v", "contacts", "cu_grain", "manhattan")


def make_pattern(name: str, rng: np.random.Generator, h: int, w: int, scale: float) -> Scene:
    """Render pattern family ``name`` at (h, w); ``scale`` = size / 256."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose one of {sorted(PATTERNS)}")
    return PATTERNS[name](rng, h, w, scale)
