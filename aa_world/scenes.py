"""Procedural scene backgrounds: nine places, each varied by a seed.

A scene is a float32 (H, W, 3) image in [0, 255], rendered once per clip. Every scene has its own
colour layout (sky / horizon / ground bands and a few characteristic shapes), so the nine stay
distinguishable at 64×64. Geometry is relative to the frame, so any size works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import raster
from .identity import check_seed

F32 = np.float32
SCENES = ("beach", "forest", "city street", "snow field", "night sky", "desert", "indoor room", "stage", "park")


@dataclass
class _Patch:
    """Coverage (h, w) of a shape inside its bounding box (rows ys, columns xs) of the frame."""

    ys: slice
    xs: slice
    cov: np.ndarray

    def __mul__(self, k: float) -> "_Patch":
        return _Patch(self.ys, self.xs, self.cov * F32(k))


class _Canvas:
    """A background being drawn: image (H, W, 3) float32 and pixel-centre grids px (1, W), py (H, 1)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.w, self.h, self.rng = width, height, rng
        self.u = float(min(width, height))  # unit for round things
        self.img = np.zeros((height, width, 3), F32)
        self.px = np.arange(width, dtype=F32)[None, :]
        self.py = np.arange(height, dtype=F32)[:, None]

    def colour(self, rgb, jitter: float = 10.0) -> np.ndarray:
        """A base colour with a seeded jitter per channel."""
        return np.clip(np.asarray(rgb, F32) + self.rng.normal(0.0, jitter, 3).astype(F32), 0, 255)

    def fill(self, cov, colour) -> None:
        """Composite `colour` with coverage: a _Patch, an (H, W) array or a scalar."""
        if isinstance(cov, _Patch):
            if cov.cov.size:
                dst = self.img[cov.ys, cov.xs]
                dst += cov.cov[..., None] * (np.asarray(colour, F32) - dst)
            return
        cov = np.broadcast_to(np.asarray(cov, F32), (self.h, self.w))
        self.img += cov[..., None] * (np.asarray(colour, F32) - self.img)

    def gradient(self, top, bottom, y0: float, y1: float, below: float = -1e9, above: float = 1e9) -> None:
        """A vertical gradient from `top` at y0 to `bottom` at y1, painted on rows in [below, above)."""
        t = np.clip((self.py - y0) / max(y1 - y0, 1e-3), 0.0, 1.0)[..., None]  # (H, 1, 1)
        col = np.asarray(top, F32) + t * (np.asarray(bottom, F32) - np.asarray(top, F32))  # (H, 1, 3)
        rows = ((self.py >= below) & (self.py < above))[..., None]
        self.img = np.where(rows, np.broadcast_to(col, self.img.shape), self.img).astype(F32)

    def below_curve(self, ys: np.ndarray) -> np.ndarray:
        """Coverage of the area below a curve y(x) given per column (1, W)."""
        return np.clip(0.5 + (self.py - ys), 0.0, 1.0)

    def _patch(self, x0, x1, y0, y1, sdf) -> _Patch:
        """Evaluate `sdf(px, py)` in the clipped box around [x0, x1] × [y0, y1]."""
        xa, xb = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, self.w)
        ya, yb = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, self.h)
        xs, ys = slice(xa, max(xa, xb)), slice(ya, max(ya, yb))
        return _Patch(ys, xs, raster.coverage(sdf(self.px[:, xs], self.py[ys])))

    def circle(self, cx, cy, r) -> _Patch:
        return self.oval(cx, cy, r, r)

    def oval(self, cx, cy, rx, ry) -> _Patch:
        return self._patch(cx - rx, cx + rx, cy - ry, cy + ry,
                           lambda px, py: raster.ellipse(px, py, F32(cx), F32(cy), F32(rx), F32(ry)))

    def rect(self, x0, y0, x1, y1, r: float = 0.0) -> _Patch:
        return self._patch(x0, x1, y0, y1, lambda px, py: raster.box(
            px, py, F32((x0 + x1) / 2), F32((y0 + y1) / 2), F32((x1 - x0) / 2), F32((y1 - y0) / 2), F32(r)))

    def tri(self, x0, y0, x1, y1, x2, y2) -> _Patch:
        v = [F32(a) for a in (x0, y0, x1, y1, x2, y2)]
        return self._patch(min(x0, x1, x2), max(x0, x1, x2), min(y0, y1, y2), max(y0, y1, y2),
                           lambda px, py: raster.triangle(px, py, *v))

    def dots(self, n: int, y0: float, y1: float, r0: float, r1: float, colour, alpha=1.0) -> None:
        """n small seeded dots (stars, snowflakes) with radii in [r0, r1] pixels."""
        xs = self.rng.uniform(0, self.w, n)
        ys = self.rng.uniform(y0, y1, n)
        rs = self.rng.uniform(r0, r1, n)
        cov = np.zeros((self.h, self.w), F32)
        for x, y, r in zip(xs, ys, rs):
            xa, xb = max(int(x - r) - 1, 0), min(int(x + r) + 2, self.w)
            ya, yb = max(int(y - r) - 1, 0), min(int(y + r) + 2, self.h)
            d = raster.ellipse(self.px[:, xa:xb], self.py[ya:yb], F32(x), F32(y), F32(r), F32(r))
            np.maximum(cov[ya:yb, xa:xb], raster.coverage(d), out=cov[ya:yb, xa:xb])
        self.fill(cov * alpha, colour)


def _beach(c: _Canvas) -> None:
    """Sky, a sea band with white wave lines, wet/dry sand, sometimes a sun."""
    rng, w, h = c.rng, c.w, c.h
    horizon = h * rng.uniform(0.36, 0.48)
    shore = horizon + h * rng.uniform(0.12, 0.18)
    c.gradient(c.colour((95, 160, 230)), c.colour((185, 220, 245)), 0, horizon)
    if rng.random() < 0.6:
        c.fill(c.circle(w * rng.uniform(0.1, 0.9), horizon * rng.uniform(0.2, 0.5), c.u * 0.07), (255, 245, 190))
    c.fill(c.below_curve(np.full((1, w), horizon, F32)), c.colour((30, 105, 185)))
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(3, 6)
    for k in range(3):  # white wave crests on the sea
        yk = horizon + (k + 0.6) / 3.6 * (shore - horizon)
        ys = yk + 0.012 * h * np.sin(2 * np.pi * freq * c.px / w + phase + k)
        c.fill(np.clip(1.0 - np.abs(c.py - ys) / max(0.012 * h, 0.6), 0, 1) * 0.7, (235, 245, 250))
    sand_edge = shore + 0.02 * h * np.sin(2 * np.pi * rng.uniform(1, 2.5) * c.px / w + phase)
    c.fill(c.below_curve(sand_edge), c.colour((235, 210, 155)))
    c.fill(c.below_curve(sand_edge) - c.below_curve(sand_edge + 0.03 * h), (205, 180, 135))


def _forest(c: _Canvas) -> None:
    """A pale sky glimpse behind dense dark trees, trunks, mossy ground."""
    rng, w, h = c.rng, c.w, c.h
    ground = h * rng.uniform(0.55, 0.65)
    c.gradient(c.colour((175, 205, 185)), c.colour((120, 160, 120)), 0, ground)
    for layer, (shade, n) in enumerate(((60, 9), (35, 7))):
        for _ in range(n):
            x = rng.uniform(-0.05, 1.05) * w
            top = h * rng.uniform(0.0, 0.25) + layer * 0.05 * h
            half = w * rng.uniform(0.08, 0.14)
            green = c.colour((20 + shade * 0.3, 75 + shade, 35 + shade * 0.3), 8)
            c.fill(c.rect(x - 0.018 * w, top + 0.3 * h, x + 0.018 * w, ground + 0.02 * h), c.colour((85, 55, 30), 6))
            c.fill(c.tri(x, top, x - half, ground - 0.1 * h, x + half, ground - 0.1 * h), green)
    c.fill(c.below_curve(np.full((1, w), ground, F32)), c.colour((55, 85, 35)))
    c.dots(12, ground, h, 0.01 * c.u, 0.03 * c.u, (40, 65, 25), 0.8)


def _city_street(c: _Canvas) -> None:
    """Buildings with lit windows over a sidewalk and a dark road with lane marks."""
    rng, w, h = c.rng, c.w, c.h
    street = h * rng.uniform(0.58, 0.66)
    c.gradient(c.colour((150, 185, 220)), c.colour((205, 215, 225)), 0, street)
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = w * rng.uniform(0.16, 0.3)
        top = h * rng.uniform(0.08, 0.35)
        wall = c.colour([(150, 150, 155), (165, 120, 95), (200, 185, 160), (110, 115, 130)][int(rng.integers(4))], 8)
        c.fill(c.rect(x, top, x + bw - 0.01 * w, street), wall)
        win = c.colour((245, 220, 120) if rng.random() < 0.6 else (180, 215, 240), 6)
        cols = max(2, int(bw / (0.07 * w)))
        rows = max(2, int((street - top) / (0.09 * h)))
        for i in range(cols):
            for j in range(rows - 1):
                wx = x + (i + 0.5) * bw / cols
                wy = top + (j + 0.6) * (street - top) / rows
                c.fill(c.rect(wx - 0.018 * w, wy - 0.022 * h, wx + 0.018 * w, wy + 0.022 * h), win)
        x += bw
    c.fill(c.below_curve(np.full((1, w), street, F32)), c.colour((175, 172, 165)))
    road = street + h * 0.1
    c.fill(c.below_curve(np.full((1, w), road, F32)), c.colour((70, 70, 78)))
    dash_y = road + 0.5 * (h - road)
    offset = rng.uniform(0, 0.25) * w
    for k in range(-1, 5):
        x0 = offset + k * 0.25 * w
        c.fill(c.rect(x0, dash_y - 0.008 * h, x0 + 0.12 * w, dash_y + 0.008 * h), (235, 235, 235))


def _snow_field(c: _Canvas) -> None:
    """Pale sky, blue-grey mountains with snow caps, white ground, falling snow."""
    rng, w, h = c.rng, c.w, c.h
    horizon = h * rng.uniform(0.45, 0.55)
    c.gradient(c.colour((175, 195, 225)), c.colour((220, 230, 242)), 0, horizon)
    for _ in range(int(rng.integers(2, 4))):
        x, half = rng.uniform(0, 1) * w, w * rng.uniform(0.2, 0.35)
        peak = horizon - h * rng.uniform(0.15, 0.28)
        c.fill(c.tri(x, peak, x - half, horizon + 1, x + half, horizon + 1), c.colour((135, 150, 180), 8))
        cap = 0.3
        c.fill(c.tri(x, peak, x - half * cap, peak + (horizon - peak) * cap, x + half * cap,
                     peak + (horizon - peak) * cap), (245, 248, 252))
    c.gradient(c.colour((240, 244, 250), 4), c.colour((222, 230, 243), 4), horizon, h, below=horizon)
    c.dots(int(40 * rng.uniform(0.7, 1.3)), 0, h, 0.006 * c.u, 0.016 * c.u, (255, 255, 255), 0.9)


def _night_sky(c: _Canvas) -> None:
    """Dark blue sky full of stars, a moon, black hills."""
    rng, w, h = c.rng, c.w, c.h
    c.gradient(c.colour((8, 12, 40), 5), c.colour((30, 38, 85), 6), 0, h * 0.75)
    c.dots(int(45 * rng.uniform(0.7, 1.3)), 0, h * 0.7, 0.004 * c.u, 0.012 * c.u, (255, 250, 220))
    mx, my, mr = w * rng.choice([rng.uniform(0.1, 0.3), rng.uniform(0.7, 0.9)]), h * rng.uniform(0.1, 0.25), c.u * 0.07
    c.fill(c.circle(mx, my, mr), (245, 240, 205))
    if rng.random() < 0.5:  # crescent
        c.fill(c.circle(mx + 0.45 * mr, my - 0.2 * mr, mr * 0.9), c.img[int(np.clip(my, 0, h - 1)), 0])
    hills = h * rng.uniform(0.62, 0.7) + 0.05 * h * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * c.px / w
                                                          + rng.uniform(0, 6))
    c.fill(c.below_curve(hills), c.colour((18, 28, 24), 4))


def _desert(c: _Canvas) -> None:
    """Warm orange sky with a big sun, layered sand dunes, sometimes a cactus."""
    rng, w, h = c.rng, c.w, c.h
    horizon = h * rng.uniform(0.42, 0.52)
    c.gradient(c.colour((235, 160, 90)), c.colour((250, 220, 165)), 0, horizon + 0.1 * h)
    c.fill(c.circle(w * rng.uniform(0.15, 0.85), h * rng.uniform(0.12, 0.3), c.u * 0.1), (255, 245, 200))
    for k, base in enumerate(((225, 165, 95), (212, 148, 78), (232, 182, 112))):
        y0 = horizon + k * 0.12 * h
        ys = y0 + 0.05 * h * np.sin(2 * np.pi * rng.uniform(0.6, 1.6) * c.px / w + rng.uniform(0, 6))
        c.fill(c.below_curve(ys), c.colour(base, 8))
    if rng.random() < 0.6:
        x, base = w * rng.choice([rng.uniform(0.05, 0.22), rng.uniform(0.78, 0.95)]), horizon + 0.18 * h
        green = c.colour((60, 125, 65), 6)
        c.fill(c.rect(x - 0.02 * w, base - 0.22 * h, x + 0.02 * w, base, 0.02 * w), green)
        c.fill(c.rect(x - 0.07 * w, base - 0.15 * h, x - 0.04 * w, base - 0.08 * h, 0.015 * w), green)
        c.fill(c.rect(x - 0.07 * w, base - 0.1 * h, x, base - 0.075 * h), green)


def _indoor_room(c: _Canvas) -> None:
    """A painted wall with a window and a picture, skirting board and a wooden floor."""
    rng, w, h = c.rng, c.w, c.h
    floor = h * rng.uniform(0.6, 0.7)
    wall = c.colour([(225, 205, 170), (200, 215, 225), (230, 205, 210), (210, 225, 195)][int(rng.integers(4))], 8)
    c.gradient(wall, wall * 0.88, 0, floor)
    side = rng.random() < 0.5
    wx0 = w * (rng.uniform(0.05, 0.12) if side else rng.uniform(0.6, 0.68))
    wy0, ww, wh = h * rng.uniform(0.1, 0.18), w * 0.3, h * 0.3
    c.fill(c.rect(wx0 - 0.02 * w, wy0 - 0.02 * h, wx0 + ww + 0.02 * w, wy0 + wh + 0.02 * h), (245, 245, 240))
    c.fill(c.rect(wx0, wy0, wx0 + ww, wy0 + wh), c.colour((150, 200, 240)))
    c.fill(c.rect(wx0 + ww / 2 - 0.008 * w, wy0, wx0 + ww / 2 + 0.008 * w, wy0 + wh), (245, 245, 240))
    px0 = w * (rng.uniform(0.66, 0.76) if side else rng.uniform(0.1, 0.18))
    c.fill(c.rect(px0, h * 0.18, px0 + 0.16 * w, h * 0.34), (95, 65, 40))
    c.fill(c.rect(px0 + 0.02 * w, h * 0.2, px0 + 0.14 * w, h * 0.32), c.colour((90, 140, 110), 30))
    c.fill(c.below_curve(np.full((1, w), floor, F32)), c.colour((150, 100, 60)))
    c.fill(c.below_curve(np.full((1, w), floor, F32)) - c.below_curve(np.full((1, w), floor + 0.03 * h, F32)),
           (240, 235, 225))
    for k in range(1, 5):  # plank seams
        y = floor + 0.03 * h + k * (h - floor) / 5
        c.fill(np.clip(1.0 - np.abs(c.py - y) / max(0.006 * h, 0.5), 0, 1) * 0.5 * np.ones((1, w)), (110, 70, 40))


def _stage(c: _Canvas) -> None:
    """Dark backdrop, red curtains with folds, wooden boards and a spotlight on the centre."""
    rng, w, h = c.rng, c.w, c.h
    floor = h * rng.uniform(0.66, 0.74)
    c.gradient(c.colour((30, 18, 28), 5), c.colour((15, 10, 15), 4), 0, floor)
    red = c.colour((160, 20, 35), 10)
    folds = 0.75 + 0.25 * np.sin(2 * np.pi * c.px / (0.05 * w + 1e-3))  # (1, W) shading of the folds
    width = w * rng.uniform(0.16, 0.22)
    curtain = np.clip(0.5 + width - c.px, 0, 1) + np.clip(0.5 + c.px - (w - 1 - width), 0, 1)
    c.fill(curtain * (c.py < floor), red * folds[..., None])  # colour (1, W, 3)
    c.fill(c.rect(-1, -1, w + 1, h * 0.09), red * 0.9)
    c.fill(c.below_curve(np.full((1, w), floor, F32)), c.colour((120, 75, 40)))
    c.fill(c.tri(w * 0.5, -0.05 * h, w * 0.25, floor + 0.1 * h, w * 0.75, floor + 0.1 * h) * 0.18, (255, 240, 200))
    c.fill(c.oval(w * 0.5, floor + 0.16 * h, w * 0.3, 0.09 * h) * 0.45, (255, 240, 200))


def _park(c: _Canvas) -> None:
    """Blue sky with clouds, bright green lawn, bushes, a round tree and a sandy path."""
    rng, w, h = c.rng, c.w, c.h
    horizon = h * rng.uniform(0.5, 0.6)
    c.gradient(c.colour((100, 165, 235)), c.colour((175, 210, 245)), 0, horizon)
    for _ in range(int(rng.integers(1, 4))):
        x, y = w * rng.uniform(0, 1), h * rng.uniform(0.08, 0.3)
        for dx in (-0.07, 0.0, 0.07):
            c.fill(c.oval(x + dx * w, y + abs(dx) * 0.3 * h, 0.08 * w, 0.045 * h), (250, 250, 252))
    c.fill(c.below_curve(np.full((1, w), horizon, F32)), c.colour((95, 175, 70)))
    for _ in range(int(rng.integers(3, 6))):
        c.fill(c.circle(w * rng.uniform(0, 1), horizon, c.u * rng.uniform(0.05, 0.09)), c.colour((50, 135, 55), 8))
    tx = w * (rng.uniform(0.05, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 0.95))
    c.fill(c.rect(tx - 0.02 * w, horizon - 0.2 * h, tx + 0.02 * w, horizon + 0.05 * h), (100, 65, 35))
    c.fill(c.circle(tx, horizon - 0.25 * h, c.u * 0.13), c.colour((45, 140, 50), 8))
    path_x = w * rng.uniform(0.3, 0.7)
    c.fill(c.tri(path_x, horizon, path_x - 0.35 * w, h * 1.05, path_x + 0.35 * w, h * 1.05) * 0.85,
           c.colour((210, 190, 145)))


SCENE_FUNCTIONS: dict[str, Callable[[_Canvas], None]] = {
    "beach": _beach, "forest": _forest, "city street": _city_street, "snow field": _snow_field,
    "night sky": _night_sky, "desert": _desert, "indoor room": _indoor_room, "stage": _stage, "park": _park,
}


def render_scene(name: str, seed: int, width: int, height: int) -> np.ndarray:
    """The background of scene `name` varied by `seed`: float32 (H, W, 3) in [0, 255]."""
    if name not in SCENE_FUNCTIONS:
        raise ValueError(f"scene={name!r}: use one of {', '.join(SCENES)}")
    seed = check_seed(seed, "scene seed")
    canvas = _Canvas(int(width), int(height), np.random.default_rng([seed, SCENES.index(name)]))
    SCENE_FUNCTIONS[name](canvas)
    return np.clip(canvas.img, 0, 255).astype(F32)
