"""The six defect types, drawn as edits of a :class:`~semclip.synth.patterns.Scene`.

Each defect changes what is physically there (feature geometry, foreign material, surface
height, buried contrast) and leaves imaging to :mod:`semclip.synth.effects`; the mask is then
measured from the noise-free signal with and without the defect (:func:`measure_mask`), so it
covers exactly what the defect makes visible. Sizes are in pixels of a 256 px image times
``scale``. ``detector_angle`` is where the SE detector sits: shadows fall on the far side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from semclip.synth.patterns import Scene

DefectFn = Callable[..., Scene]  # (scene, rng, scale, detector_angle, variant=PLAIN) -> Scene


@dataclass(frozen=True)
class DefectSpec:
    """Ranges one style draws its defects from (per image)."""

    size: tuple[float, float] = (1.0, 1.0)  # defect size multiplier, drawn log-uniformly
    edge_prob: float = 0.0  # chance the defect may sit anywhere, cut by the frame edge
    variant_prob: float = 0.0  # chance of the defect type's alternative appearance


@dataclass(frozen=True)
class Variant:
    """How one defect is drawn beyond its size: placement freedom and appearance."""

    margin: float = 1.0  # fraction of the usual margin kept from the frame (0 = anywhere)
    alt: bool = False  # the alternative appearance (dark particle, rimless hole, ...)


PLAIN = Variant()

_Window = tuple[tuple[slice, slice], np.ndarray, np.ndarray]


def _window(shape: tuple[int, int], cy: float, cx: float, half: float) -> _Window:
    """Slices of a square window around (cy, cx) clipped to the image, and its (y, x) offsets.

    The window may be empty when the centre lies more than ``half`` outside the image.
    """
    h, w = shape
    y0, x0 = min(h, max(0, int(cy - half))), min(w, max(0, int(cx - half)))
    y1, x1 = max(y0, min(h, int(cy + half) + 2)), max(x0, min(w, int(cx + half) + 2))
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy  # (h', 1)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx  # (1, w')
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _paste(shape: tuple[int, int], where: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
    """Full-size float32 map that is ``local`` inside the window and zero elsewhere."""
    full = np.zeros(shape, np.float32)
    full[where] = local
    return full


def _centre(rng: np.random.Generator, shape: tuple[int, int], margin: float) -> tuple[float, float]:
    """A random defect centre at least ``margin`` pixels inside the scene."""
    h, w = shape
    my, mx = min(margin, h / 2 - 1), min(margin, w / 2 - 1)
    return float(rng.uniform(my, h - my)), float(rng.uniform(mx, w - mx))


def _blob_distance(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    radius: float,
    aspect: float,
    roughness: float,
) -> np.ndarray:
    """Signed distance (px, positive inside) to an irregular, rotated ellipse of ``radius``.

    The outline is an ellipse whose radius is modulated by a few low angular harmonics, which
    gives the lumpy outlines of particles and voids without per-pixel loops.
    """
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) / aspect
    rho = np.hypot(u, v)  # (h', w')
    theta = np.arctan2(v, u)
    outline = np.ones_like(rho)
    for k in range(2, 6):
        outline += rng.normal(0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return (radius * outline - rho) * np.sqrt(aspect)


def _gap_candidates(
    material: np.ndarray, rng: np.random.Generator, max_len: int, margin: int
) -> list[tuple[int, int, int, int]]:
    """Axis-aligned gaps (y0, x0, y1, x1) between two features, found by casting rays.

    Random points in the space are probed left/right and up/down; a gap counts when features lie
    on both sides within ``max_len`` pixels. Typical gaps win over the shortest ones (pinch
    points of rough lines) and the longest (line ends, diagonals), so the bridge spans one space.
    """
    h, w = material.shape
    solid = material > 0.5
    n = 256
    py = rng.integers(margin, max(margin + 1, h - margin), n)
    px = rng.integers(margin, max(margin + 1, w - margin), n)
    keep = ~solid[py, px]
    py, px = py[keep], px[keep]
    steps = np.arange(1, max_len + 1)
    found: list[tuple[int, int, int, int, int]] = []
    for dy, dx in ((0, 1), (1, 0)):
        reach = []
        for sign in (1, -1):
            ys = py[:, None] + sign * dy * steps  # (N, L)
            xs = px[:, None] + sign * dx * steps
            inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            hit = inside & solid[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)]
            first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 10**6)
            reach.append(first)
        length = reach[0] + reach[1]
        for i in np.flatnonzero(length <= max_len):
            a, b = reach[1][i], reach[0][i]
            found.append(
                (int(length[i]), py[i] - dy * a, px[i] - dx * a, py[i] + dy * b, px[i] + dx * b)
            )
    if not found:
        return []
    lengths = np.array([f[0] for f in found])
    low, high = np.percentile(lengths, [20, 70])
    return [f[1:] for f in found if low <= f[0] <= high]


def bridge(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Bridge: a short, necked strip of feature material joining two neighbouring features.

    Alternative: a wide, blob-like bridge without a neck (a merged resist footing).
    """
    margin = int(max(scene.pitch, 12 * scale) * variant.margin)
    gaps = _gap_candidates(scene.material, rng, int(3 * scene.pitch) + 4, margin)
    if gaps:
        y0, x0, y1, x1 = gaps[int(rng.integers(len(gaps)))]
    else:  # no two features close enough: bridge across one pitch anywhere
        cy, cx = _centre(rng, scene.shape, scene.pitch * variant.margin)
        y0, x0, y1, x1 = int(cy), int(cx - scene.pitch / 2), int(cy), int(cx + scene.pitch / 2)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    half_len = max(abs(y1 - y0), abs(x1 - x0)) / 2 + 1.5 * scale
    where, yy, xx = _window(scene.shape, cy, cx, half_len + scene.pitch)
    along, across = (xx, yy) if y0 == y1 else (yy, xx)
    t = np.clip(along / half_len, -1.0, 1.0)  # (h', w') position along the bridge
    width = rng.uniform(0.25, 0.5) * scene.pitch + 1.5 * scale
    neck = rng.uniform(0.0, 0.35)
    if variant.alt:
        width, neck = rng.uniform(0.7, 1.1) * scene.pitch + 2 * scale, -rng.uniform(0.1, 0.3)
    half_w = 0.5 * width * (1 - neck * (1 - t**2)) * (1 + 0.15 * np.sin(5 * t + rng.uniform(0, 6)))
    centre_line = rng.normal(0, 0.1 * width) * np.sin(np.pi * t)  # slight kink
    inside = np.clip(half_w - np.abs(across - centre_line) + 0.5, 0, 1)
    inside *= np.clip(half_len - np.abs(along) + 0.5, 0, 1)
    material = scene.material.copy()
    material[where] = np.maximum(material[where], inside)
    return scene.with_material(material)


def copper_residue(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Cu residue after CMP: soft, mottled mid-grey blotches that veil the pattern.

    Alternative: sharp-edged, brighter flakes.
    """
    radius = min(rng.uniform(9.0, 32.0) * scale, 0.28 * min(scene.shape))
    cy, cx = _centre(rng, scene.shape, radius * 0.8 * variant.margin)
    where, yy, xx = _window(scene.shape, cy, cx, radius * 2.2)
    aspect = rng.uniform(0.5, 1.0)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) / aspect
    envelope = np.exp(-(u**2 + v**2) / (2 * radius**2))  # (h', w')
    lumps = ndimage.gaussian_filter(rng.standard_normal(envelope.shape), radius / 4)
    lumps /= lumps.std() + 1e-9
    blotch = envelope * (1.0 + 0.6 * lumps)
    cover = np.clip((blotch - 0.35) / 0.25, 0, 1)
    soft = 0.3 if variant.alt else rng.uniform(1.0, 2.5)
    cover = ndimage.gaussian_filter(cover, soft * scale)
    mottle = ndimage.gaussian_filter(rng.standard_normal(envelope.shape), 1.5 * scale)
    alpha = cover * np.clip(rng.uniform(0.5, 0.8) + 0.12 * mottle, 0, 1)
    level = rng.uniform(0.58, 0.75) if variant.alt else rng.uniform(0.36, 0.5)
    level = level + 0.03 * mottle
    scene = scene.with_paint(_paste(scene.shape, where, alpha), _paste(scene.shape, where, level))
    return scene.with_relief(_paste(scene.shape, where, 0.25 * alpha))


def hole(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Hole/void: missing material, a dark roughly elliptical pit with a bright raised rim.

    Alternative: a shallow, rimless, grey-floored pit (a partly filled void).
    """
    radius = np.exp(rng.uniform(np.log(5.0), np.log(18.0))) * scale
    cy, cx = _centre(rng, scene.shape, (radius * 1.6 + 4) * variant.margin)
    where, yy, xx = _window(scene.shape, cy, cx, radius * 1.8 + 4)
    sd = _blob_distance(rng, yy, xx, radius, rng.uniform(0.55, 1.0), rng.uniform(0.03, 0.12))
    floor = np.clip(sd / (0.8 + 0.15 * radius) + 0.5, 0, 1)  # (h', w') 1 on the pit floor
    depth = rng.uniform(0.8, 1.6)
    lip = rng.uniform(0.2, 0.5) * np.exp(-((sd + 1.2 * scale) ** 2) / (2 * (1.0 * scale) ** 2))
    dark = rng.uniform(0.02, 0.1) + 0.05 * np.clip(1 - sd / radius, 0, 1)
    if variant.alt:
        lip, depth, dark = 0.0 * lip, 0.4 * depth, dark + rng.uniform(0.1, 0.2)
    scene = scene.with_paint(
        _paste(scene.shape, where, 0.92 * floor), _paste(scene.shape, where, dark)
    )
    return scene.with_relief(_paste(scene.shape, where, lip - depth * floor))


def infilm(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """In-film (buried) particle: a soft, low-contrast bump that bulges the pattern above it.

    Alternative: the buried particle shows as a dark ring (a charging halo) around the bump.
    """
    sigma = rng.uniform(5.0, 14.0) * scale
    cy, cx = _centre(rng, scene.shape, sigma * 2.0 * variant.margin)
    where, yy, xx = _window(scene.shape, cy, cx, sigma * 3.2)
    aspect = rng.uniform(0.7, 1.0)
    bump = np.exp(-(yy**2 + (xx * aspect) ** 2) / (2 * sigma**2))  # (h', w')
    push = rng.uniform(0.6, 1.6) * scale * bump / sigma  # film bulge pushes features outward
    grid_y, grid_x = np.mgrid[where]
    local = ndimage.map_coordinates(
        scene.material, [grid_y - push * yy, grid_x - push * xx], order=1, mode="nearest"
    )
    softened = ndimage.gaussian_filter(local, 1.5 * scale)
    local = local + (softened - local) * 0.6 * bump  # film over the particle smooths the pattern
    material = scene.material.copy()
    material[where] = local
    contrast = rng.choice([-1.0, 1.0], p=[0.3, 0.7]) * rng.uniform(0.06, 0.12)
    shape = bump
    if variant.alt:
        contrast, shape = -rng.uniform(0.08, 0.14), 4.0 * bump * (1.0 - bump)
    scene = scene.with_material(material).with_offset(_paste(scene.shape, where, contrast * shape))
    return scene.with_relief(_paste(scene.shape, where, rng.uniform(0.4, 0.8) * bump))


def particle(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Surface particle: bright, sharp-edged lump casting a dark shadow away from the detector.

    Alternative: an insulating particle that charges dark, with a bright halo and no shadow.
    """
    radius = np.exp(rng.uniform(np.log(3.0), np.log(16.0))) * scale
    reach = radius * 2.2 + 4
    cy, cx = _centre(rng, scene.shape, reach * variant.margin)
    where, yy, xx = _window(scene.shape, cy, cx, reach)
    aspect = rng.uniform(0.6, 1.0)
    sd = _blob_distance(rng, yy, xx, radius, aspect, rng.uniform(0.05, 0.22))
    body = np.clip(sd + 0.5, 0, 1)  # (h', w') sharp outline
    dome = np.sqrt(np.clip(sd / radius, 0, 1))
    throw = radius * rng.uniform(0.5, 0.9)
    sy, sx = -throw * np.sin(detector_angle), -throw * np.cos(detector_angle)
    cast = ndimage.shift(body, (sy, sx), order=1, mode="constant")
    shadow = ndimage.gaussian_filter(cast, 0.25 * radius + 0.5) * (1 - body)
    level = rng.uniform(0.62, 0.9)
    offset = -rng.uniform(0.12, 0.22) * shadow
    if variant.alt:
        halo = ndimage.gaussian_filter(body, 0.4 * radius + 1.0) * (1 - body)
        level, offset = rng.uniform(0.03, 0.12), rng.uniform(0.1, 0.2) * halo
    where_full = _paste(scene.shape, where, body)
    scene = scene.with_paint(where_full, level)
    scene = scene.with_offset(_paste(scene.shape, where, offset))
    return scene.with_relief(_paste(scene.shape, where, rng.uniform(1.0, 2.0) * dome))


def _polyline_distance(
    shape: tuple[int, int], points: np.ndarray, reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (px) to a polyline and the arc-length fraction of the nearest point, (H, W) each.

    Only pixels within ``reach`` of the path are measured (others stay at +inf): each segment is
    handled in its own small window, which keeps long scratches cheap.
    """
    best = np.full(shape, np.inf, np.float32)
    where_t = np.zeros(shape, np.float32)
    seg = np.diff(points, axis=0)  # (S, 2) as (dy, dx)
    seg_len = np.hypot(seg[:, 0], seg[:, 1]) + 1e-9
    arc = np.concatenate([[0.0], np.cumsum(seg_len)]) / seg_len.sum()
    for i, ((py, px), (dy, dx)) in enumerate(zip(points[:-1], seg, strict=True)):
        cy, cx = py + dy / 2, px + dx / 2
        where, yy, xx = _window(shape, cy, cx, max(abs(dy), abs(dx)) / 2 + reach)
        if yy.size == 0 or xx.size == 0:
            continue  # this part of the path lies outside the scene
        yy, xx = yy + cy - py, xx + cx - px  # offsets from the segment start
        s = np.clip((yy * dy + xx * dx) / seg_len[i] ** 2, 0, 1)
        d = np.hypot(yy - s * dy, xx - s * dx)
        closer = d < best[where]
        best[where] = np.where(closer, d, best[where])
        where_t[where] = np.where(closer, arc[i] + s * (arc[i + 1] - arc[i]), where_t[where])
    return best, where_t


def _curve(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """A gently curved path (quadratic Bezier) of about ``length`` px through the scene, (S, 2)."""
    h, w = shape
    cy, cx = _centre(rng, shape, 0.15 * min(h, w))
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    bend = rng.normal(0, 0.12) * length
    t = np.linspace(-0.5, 0.5, 17)[:, None]
    return np.array([cy, cx]) + t * length * direction + (1 - 4 * t**2) * bend * normal  # (S, 2)


def _linear_scratch(scene: Scene, rng: np.random.Generator, scale: float) -> Scene:
    """BEOL scratch: a long, thin, dark groove with bright walls, width varying along it."""
    h, w = scene.shape
    path = _curve(rng, scene.shape, rng.uniform(0.4, 1.1) * max(h, w))
    width = rng.uniform(0.8, 2.6) * scale
    dist, t = _polyline_distance((h, w), path, reach=1.3 * width + 2)
    phase = rng.uniform(0, 2 * np.pi)
    half_w = width * (1 + 0.3 * np.sin(6 * t + phase))
    fade = np.clip(np.minimum(t, 1 - t) * 12, 0, 1)  # scratch tapers out at its ends
    groove = np.clip(half_w * fade - dist + 0.5, 0, 1)  # (H, W)
    scene = scene.with_paint(0.85 * groove, rng.uniform(0.04, 0.14))
    return scene.with_relief(-rng.uniform(1.0, 1.6) * groove)


def _fish_scale(scene: Scene, rng: np.random.Generator, scale: float) -> Scene:
    """FEOL fish-scale scratch: a chain of shallow crescent-shaped depressions along a path.

    Each mark is an elliptical dent, deepest at its leading edge (a bright arc there), left by a
    particle skipping under the polishing pad.
    """
    h, w = scene.shape
    spacing = rng.uniform(8.0, 15.0) * scale
    path = _curve(rng, scene.shape, rng.uniform(0.3, 0.7) * min(h, w))
    steps = np.hypot(*np.diff(path, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    marks = np.arange(spacing / 2, arc[-1], spacing)
    centres = np.stack([np.interp(marks, arc, path[:, k]) for k in (0, 1)], axis=1)  # (M, 2)
    tangent = np.gradient(centres, axis=0)
    tangent /= np.hypot(tangent[:, :1], tangent[:, 1:]) + 1e-9
    semi_along = spacing * rng.uniform(0.4, 0.55)
    semi_across = semi_along * rng.uniform(1.3, 2.2)
    depth, rim = np.zeros((2, h, w), np.float32)
    for (cy, cx), (ty, tx) in zip(centres, tangent, strict=True):
        where, yy, xx = _window((h, w), cy, cx, semi_across + 3)
        if yy.size == 0 or xx.size == 0:
            continue  # this mark falls outside the scene
        u, v = xx * tx + yy * ty, -xx * ty + yy * tx  # along / across the chain
        inset = (1 - np.hypot(u / semi_along, v / semi_across)) * semi_along  # px inside the dent
        lead = np.clip(u / semi_along + 0.3, 0, 1)  # the leading half of the outline
        chisel = np.clip(0.6 + 0.4 * u / semi_along, 0.2, 1.0)  # deepest at the leading edge
        depth[where] = np.maximum(depth[where], np.clip(inset, 0, 1) * chisel)
        rim[where] = np.maximum(rim[where], np.exp(-0.5 * (inset / scale) ** 2) * lead)
    scene = scene.with_offset(rng.uniform(0.12, 0.22) * rim - rng.uniform(0.06, 0.12) * depth)
    return scene.with_relief(-rng.uniform(0.6, 1.0) * depth)


def scratch(
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Scratch: a linear BEOL groove (60 %) or a FEOL fish-scale chain (40 %).

    Alternative: a bundle of 2-4 fine grooves (a pad dragging several particles).
    """
    if variant.alt:
        for _ in range(int(rng.integers(2, 5))):
            scene = _linear_scratch(scene, rng, 0.6 * scale)
        return scene
    if rng.random() < 0.6:
        return _linear_scratch(scene, rng, scale)
    return _fish_scale(scene, rng, scale)


DEFECTS: dict[str, DefectFn] = {
    "bridge": bridge,
    "copper_residue": copper_residue,
    "hole": hole,
    "infilm": infilm,
    "particle": particle,
    "scratch": scratch,
}


# How far (px at 256) to smooth a defect's change before thresholding it into a mask: soft,
# diffuse defects are annotated as one smooth blob, sharp ones follow their outline.
MASK_SMOOTHING: dict[str, float] = {"infilm": 3.0, "copper_residue": 2.0}


def apply_defect(
    label: str,
    scene: Scene,
    rng: np.random.Generator,
    scale: float,
    detector_angle: float,
    variant: Variant = PLAIN,
) -> Scene:
    """Add one defect of type ``label`` to the scene."""
    if label not in DEFECTS:
        raise ValueError(f"unknown defect {label!r}; choose one of {sorted(DEFECTS)}")
    return DEFECTS[label](scene, rng, scale, detector_angle, variant)


def measure_mask(
    clean: np.ndarray, defective: np.ndarray, *, smoothing: float = 1.0, min_change: float = 0.03
) -> np.ndarray:
    """Pixel mask of where the defect visibly changes the noise-free signal, (H, W) bool.

    A pixel counts when its change, smoothed over ``smoothing`` px, reaches ``min_change`` (grey
    levels in [0, 1]) or 5 % of the largest change, whichever is larger. The result is closed,
    filled and cleared of specks so it reads as one annotated region, as a human labeller draws
    it. Work happens in the bounding box of the change only.
    """
    mask = np.zeros(clean.shape, bool)
    changed = defective != clean
    if not changed.any():
        return mask
    pad = int(6 * smoothing) + 4
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    box = (
        slice(max(0, rows[0] - pad), rows[-1] + 1 + pad),
        slice(max(0, cols[0] - pad), cols[-1] + 1 + pad),
    )
    change = ndimage.gaussian_filter(np.abs(defective[box] - clean[box]), smoothing)  # (h', w')
    local = change > max(min_change, 0.05 * float(change.max()))
    radius = max(2, round(2 * smoothing))  # bridge gaps as wide as the defect is diffuse
    disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
    local |= ndimage.binary_closing(local, structure=disk)  # `|=`: no erosion at the border
    local = ndimage.binary_fill_holes(local)
    labels, n = ndimage.label(local)
    if n > 1:
        sizes = ndimage.sum_labels(local, labels, index=np.arange(1, n + 1))
        local = np.isin(labels, 1 + np.flatnonzero(sizes > 4))
    mask[box] = local
    return mask
