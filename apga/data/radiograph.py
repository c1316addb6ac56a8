"""The picture: one radiograph-like image, its relevance mask (the bones) and its finding mask.

Soft tissue and one or two bones (bright cortex, darker medulla) at a random pose; an abnormal
image carries a small finding inside a bone (a fracture line or a lytic spot); everything else
is label-independent: L/R markers and digits, collimation borders, look-alike dark lines and
spots outside the bones, a gradient, noise and random gain/gamma. `apga.data.synthetic` lays
such images out as MURA's files.
"""
from __future__ import annotations

import numpy as np

# 5x3 bitmaps of the characters burnt into radiographs as markers.
_GLYPHS = {
    "L": ["100", "100", "100", "100", "111"],
    "R": ["110", "101", "110", "101", "101"],
    "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"],
    "3": ["111", "001", "011", "001", "111"],
}
_GLYPHS = {k: np.array([[c == "1" for c in row] for row in v]) for k, v in _GLYPHS.items()}

# Bones per part (how many rods, relative thickness): cosmetic variety between parts.
_ANATOMY = {"elbow": (2, 0.16), "finger": (1, 0.11), "forearm": (2, 0.12), "hand": (2, 0.10),
            "humerus": (1, 0.18), "shoulder": (1, 0.20), "wrist": (2, 0.13)}


def _segment_distance(ys, xs, p0, p1):
    """Distance of every pixel to the segment p0-p1 and the position t in [0, 1] along it, both
    float64 (H, W), for pixel rows `ys` (H, 1) and columns `xs` (1, W) (float32 coordinates).

    Each pixel's value is computed by the same operations, in the same order, as on full (H, W)
    coordinate grids: broadcasting and in-place operations change only the cost."""
    d = p1 - p0
    t = (ys - p0[0]) * d[0] + (xs - p0[1]) * d[1]  # (H, W); the two factors per row and column only
    t /= max(float(d @ d), 1e-6)
    np.clip(t, 0.0, 1.0, out=t)
    dy = t * d[0]
    dy += p0[0]
    np.subtract(ys, dy, out=dy)
    dx = t * d[1]
    dx += p0[1]
    np.subtract(xs, dx, out=dx)
    return np.hypot(dy, dx, out=dy), t


def _box(cy, cx, radius: float, h: int, w: int) -> tuple[slice, slice]:
    """The rows and columns of an (h, w) image that can hold a pixel nearer than `radius` to (cy, cx):
    np.hypot(a, b) >= |a| (libm's hypot is faithfully rounded), and 2 px more than the float32
    rounding of a difference can move a pixel, so outside it such a test is False everywhere."""
    return (slice(max(0, int(np.floor(cy - radius)) - 2), min(h, int(np.ceil(cy + radius)) + 3)),
            slice(max(0, int(np.floor(cx - radius)) - 2), min(w, int(np.ceil(cx + radius)) + 3)))


def _draw_text(image, rng, text, value):
    h, w = image.shape
    scale = max(1, int(min(h, w) * rng.uniform(0.025, 0.04)))
    width = (4 * len(text) - 1) * scale
    y = int(rng.choice([rng.integers(2, max(3, h // 6)), rng.integers(max(3, h - h // 6 - 5 * scale), max(4, h - 5 * scale - 1))]))
    x = int(rng.choice([rng.integers(2, max(3, w // 6)), rng.integers(max(3, w - w // 6 - width), max(4, w - width - 1))]))
    for k, char in enumerate(text):
        glyph = np.kron(_GLYPHS[char], np.ones((scale, scale), dtype=bool))
        gy, gx = glyph.shape
        patch = image[y:y + gy, x + 4 * k * scale:x + 4 * k * scale + gx]
        patch[glyph[:patch.shape[0], :patch.shape[1]]] = value


def _darken_outside(image, bone_mask, box, spot, darker: float, brighter: float | None = None) -> None:
    """Subtract `darker` (then add `brighter`, when given) in the pixels of `image` in `box` (a pair
    of slices) where `spot` (bool, the box's shape) lies outside the bones."""
    region = image[box]
    selected = spot & ~bone_mask[box]
    values = region[selected] - darker
    region[selected] = values if brighter is None else values + brighter


def render_image(rng: np.random.Generator, body_part: str, abnormal: bool, spurious_marker: bool,
                 min_side: int = 80, max_side: int = 128, clutter: int = 0, finding_scale: float = 1.0,
                 clutter_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One radiograph-like image (float in [0, 1]), its relevance mask and its finding mask (both
    bool; the finding mask is empty for a normal image), all (H, W).

    Conditions that change only what they name: `clutter` adds that many finding-like dark spots
    and lines outside the bones, drawn from `clutter_rng` (its own stream: the image is otherwise the
    same); `finding_scale` scales the finding's size (its draws are unchanged).

    Every pixel is the one the first (full-grid, one temporary per operation) version of this
    function gave, bit for bit: the coordinates are a column (H, 1) and a row (1, W) that broadcast,
    arrays are updated in place, and small spots and lines are computed in the box that can hold
    them (`_box`); the random draws are the same, in the same order."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    yy = np.arange(h, dtype=np.float32)[:, None]  # (H, 1)
    xx = np.arange(w, dtype=np.float32)[None, :]  # (1, W)
    side = min(h, w)

    # background: dark, with a gradient
    angle = rng.uniform(0, 2 * np.pi)
    image = np.cos(angle) * yy / h + np.sin(angle) * xx / w  # (H, W) float64: the ramp
    brightness, slope = rng.uniform(0.04, 0.15), rng.uniform(0.0, 0.12)
    image -= image.min()
    image *= slope
    image += brightness

    # anatomy: soft tissue around one or two bones
    n_bones, thickness = _ANATOMY[body_part]
    center = np.array([h, w], dtype=np.float32) * rng.uniform(0.4, 0.6, size=2)
    axis = rng.uniform(0, np.pi)
    direction = np.array([np.sin(axis), np.cos(axis)], dtype=np.float32)
    normal = np.array([-direction[1], direction[0]])
    length = rng.uniform(0.55, 0.85) * np.hypot(h, w) / 2
    radius = side * thickness * rng.uniform(0.85, 1.15)
    bone_mask = np.zeros((h, w), dtype=bool)
    shafts = []
    for b in range(n_bones):
        offset = (b - (n_bones - 1) / 2) * radius * 2.6
        bend = rng.uniform(-0.25, 0.25)
        p0 = center + offset * normal - length * direction
        p1 = center + offset * normal + length * (direction + bend * normal)
        dist, t = _segment_distance(yy, xx, p0, p1)
        r = radius * rng.uniform(0.8, 1.1)
        shafts.append((dist, t, r))
        bone_mask |= dist < r
    tissue = shafts[0][0] / (radius * 3.2) if n_bones == 1 else (
        np.minimum(shafts[0][0], shafts[1][0]) if n_bones == 2 else np.min([s[0] for s in shafts], axis=0))
    if n_bones > 1:
        tissue /= radius * 3.2
    np.subtract(1.0, tissue, out=tissue)
    np.clip(tissue, 0, 1, out=tissue)
    tissue *= 0.18
    image += tissue
    for dist, _, r in shafts:
        inside = dist < r
        cortex = inside & (dist > 0.62 * r)
        np.copyto(image, 0.52 + 0.05 * rng.standard_normal(), where=inside)
        np.copyto(image, 0.78, where=cortex)

    # the finding: a small local change inside one bone
    finding_rng = np.random.default_rng(rng.integers(2**63))  # drawn always: the rest does not depend on the label
    finding = np.zeros((h, w), dtype=bool)
    if abnormal:
        rng_main, rng = rng, finding_rng
        dist, t, r = shafts[rng.integers(len(shafts))]
        rows = np.flatnonzero((yy[:, 0] > 0.1 * h) & (yy[:, 0] < 0.9 * h))  # a run of rows, and of columns
        cols = np.flatnonzero((xx[0] > 0.1 * w) & (xx[0] < 0.9 * w))
        ys, xs = np.nonzero(dist[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] < 0.8 * r) if len(rows) and len(cols) else ((), ())
        if len(ys):  # centred on a bone pixel well inside the image, so the finding is always seen
            ys, xs = ys + rows[0], xs + cols[0]
            k = rng.integers(len(ys))
            if rng.random() < 0.5:  # fracture: a dark line across the shaft
                band = np.abs(t - t[ys[k], xs[k]]) * 2 * length < rng.uniform(1.3, 1.8) * side / 32 * finding_scale
                finding = band & (dist < r)
                np.subtract(image, rng.uniform(0.45, 0.55), out=image, where=finding)
            else:  # lytic lesion: a dark spot in the bone
                spot_radius = side * rng.uniform(0.07, 0.095) * finding_scale
                box = _box(ys[k], xs[k], spot_radius, h, w)
                finding[box] = (np.hypot(yy[box[0]] - ys[k], xx[:, box[1]] - xs[k]) < spot_radius) & bone_mask[box]
                np.subtract(image, rng.uniform(0.4, 0.5), out=image, where=finding)
        rng = rng_main

    # clutter that looks like a finding but lies outside the bones (label-independent)
    for _ in range(int(rng.random() < 0.6)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            spot_radius = side * rng.uniform(0.04, 0.07)
            box = _box(cy, cx, spot_radius, h, w)
            spot = np.hypot(yy[box[0]] - cy, xx[:, box[1]] - cx) < spot_radius
        else:
            a = rng.uniform(0, np.pi)
            box = _box(cy, cx, side * 0.15, h, w)
            dy, dx = yy[box[0]] - cy, xx[:, box[1]] - cx
            spot = (np.abs(np.cos(a) * dy + np.sin(a) * dx) < 1.2) & (np.hypot(dy, dx) < side * 0.15)
        darker = rng.uniform(0.1, 0.2)
        _darken_outside(image, bone_mask, box, spot, darker, 0.3 * (rng.random() < 0.5))
    for _ in range(clutter):  # finding-like look-alikes outside the bones, from their own stream
        cy, cx = clutter_rng.uniform(0, h), clutter_rng.uniform(0, w)
        if clutter_rng.random() < 0.5:  # a dark spot, as a lytic lesion
            spot_radius = side * clutter_rng.uniform(0.07, 0.095) * finding_scale
            box = _box(cy, cx, spot_radius, h, w)
            spot = np.hypot(yy[box[0]] - cy, xx[:, box[1]] - cx) < spot_radius
        else:  # a dark line, as a fracture
            a = clutter_rng.uniform(0, np.pi)
            box = _box(cy, cx, side * 0.15, h, w)
            dy, dx = yy[box[0]] - cy, xx[:, box[1]] - cx
            spot = (np.abs(np.cos(a) * dy + np.sin(a) * dx) < side / 32 * finding_scale) & (np.hypot(dy, dx) < side * 0.15)
        _darken_outside(image, bone_mask, box, spot, clutter_rng.uniform(0.4, 0.55))

    # markers and letters, collimation borders, spurious marker
    _draw_text(image, rng, str(rng.choice(["L", "R"])), 0.95)
    if rng.random() < 0.5:
        _draw_text(image, rng, "".join(rng.choice(list("123"), size=2)), 0.9)
    for edge in range(4):
        if rng.random() < 0.35:
            width = int(side * rng.uniform(0.03, 0.12))
            value = rng.uniform(0.75, 0.95)
            if edge == 0:
                image[:width] = value
            elif edge == 1:
                image[-width:] = value
            elif edge == 2:
                image[:, :width] = value
            else:
                image[:, -width:] = value

    # acquisition: gain, gamma, noise; then the burnt-in spurious marker
    image *= rng.uniform(0.85, 1.15)
    image += rng.uniform(-0.05, 0.05)
    np.clip(image, 0, 1, out=image)
    image **= rng.uniform(0.75, 1.35)
    noise_level = rng.uniform(0.01, 0.04)
    noise = rng.standard_normal((h, w))
    noise *= noise_level
    image += noise
    np.clip(image, 0, 1, out=image)
    image = image.astype(np.float32)
    if spurious_marker:
        s = max(2, side // 16)
        image[1:1 + s, w - 1 - s:w - 1] = 1.0
    return image, bone_mask, finding
