"""Objects of the synthetic world: balloon and umbrella held in a hand, ball and dog on the ground.

Objects are drawn behind the figure and are not part of the person mask. A held object follows
its wrist keypoint frame by frame; a ground object stands beside the feet and follows the body's
sideways drift.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aa_runtime.skeleton import J, Pose3D

from . import raster
from .identity import COLOUR_RGB, COLOURS
from .raster import Layers

F32 = np.float32
OBJECTS = ("balloon", "umbrella", "ball", "dog")
HELD_OBJECTS = ("balloon", "umbrella")
GROUND_OBJECTS = ("ball", "dog")
MAX_OBJECTS = 2
OBJECT_LABELS = {kind: 9 + i for i, kind in enumerate(OBJECTS)}  # their labels in aa_world.parts.PARTS
STRING_RGB, POLE_RGB, DARK_RGB = (85, 85, 90), (55, 55, 60), (25, 20, 20)


@dataclass(frozen=True)
class ObjectSpec:
    """One object in a clip: its kind and a palette colour name."""

    kind: str
    colour: str

    def __post_init__(self):
        if self.kind not in OBJECTS:
            raise ValueError(f"object kind={self.kind!r}: use one of {', '.join(OBJECTS)}")
        if self.colour not in COLOURS:
            raise ValueError(f"object colour={self.colour!r}: use one of {', '.join(COLOURS)}")


def check_objects(objects) -> tuple[ObjectSpec, ...]:
    """Validate a clip's objects: ObjectSpec or (kind, colour) pairs, at most two, kinds distinct, in OBJECTS order."""
    out = tuple(o if isinstance(o, ObjectSpec) else ObjectSpec(*o) for o in objects)
    kinds = [o.kind for o in out]
    if len(out) > MAX_OBJECTS or len(set(kinds)) != len(kinds):
        raise ValueError(f"objects={kinds}: give at most {MAX_OBJECTS} objects of different kinds")
    return tuple(sorted(out, key=lambda o: OBJECTS.index(o.kind)))


def sample_objects(rng: np.random.Generator) -> tuple[ObjectSpec, ...]:
    """Zero (40 %), one (40 %) or two (20 %) objects of distinct kinds with random palette colours."""
    n = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
    kinds = rng.choice(len(OBJECTS), size=n, replace=False)
    return check_objects(ObjectSpec(OBJECTS[int(k)], COLOURS[int(rng.integers(len(COLOURS)))]) for k in kinds)


def _col(a) -> np.ndarray:
    return np.asarray(a, F32).reshape(-1, 1, 1)


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOUR_RGB[name], F32)


def _paint_sdf(layers: Layers, box, fn, colour, alpha: float = 1.0) -> None:
    """Evaluate distance `fn(px, py)` in the region `box` = (x0, x1, y0, y1) and paint it (not the person)."""
    reg = layers.region(*box)
    if reg is not None:
        cov = raster.coverage(fn(reg.px, reg.py))
        layers.paint(reg, cov * alpha if alpha != 1.0 else cov, colour, person=False)


def _line(layers: Layers, ax, ay, bx, by, r, colour) -> None:
    pad = r + 1
    _paint_sdf(layers, (np.minimum(ax, bx) - pad, np.maximum(ax, bx) + pad,
                        np.minimum(ay, by) - pad, np.maximum(ay, by) + pad),
               lambda px, py: raster.capsule(px, py, ax, ay, bx, by, F32(r)), colour)


def _hand(pose: Pose3D, side: str):
    """(x, y) columns (F, 1, 1) of a hand: slightly beyond the wrist along the forearm."""
    j = pose.joints
    w, e = j[:, J[f"{side}_wrist"], :2], j[:, J[f"{side}_elbow"], :2]
    h = w + 0.18 * (w - e)
    return _col(h[:, 0]), _col(h[:, 1])


def _balloon(layers: Layers, pose: Pose3D, side: str, colour: np.ndarray) -> None:
    s = pose.placement.scale
    hx, hy = _hand(pose, side)
    out = np.where(hx >= _col(pose.joints[:, J["pelvis"], 0]), 1.0, -1.0).astype(F32)
    rx, ry = 0.065 * s, 0.08 * s
    bx, by = hx + out * 0.07 * s, hy - 0.45 * s
    _line(layers, hx, hy, bx, by + ry, max(0.004 * s, 0.3), np.asarray(STRING_RGB, F32))
    box = (bx - rx, bx + rx, by - ry, by + ry)
    _paint_sdf(layers, box, lambda px, py: raster.ellipse(px, py, bx, by, F32(rx), F32(ry)), colour)
    _paint_sdf(layers, box, lambda px, py: raster.ellipse(px, py, bx - 0.35 * rx, by - 0.4 * ry,
                                                          F32(0.22 * rx), F32(0.22 * ry)),
               np.asarray((255, 255, 255), F32), 0.6)


def _umbrella(layers: Layers, pose: Pose3D, side: str, colour: np.ndarray) -> None:
    s = pose.placement.scale
    hx, hy = _hand(pose, side)
    head_top = _col(pose.joints[:, J["head"], 1]) - 1.1 * pose.body.head * s
    top = np.minimum(hy - 0.3 * s, head_top - 0.12 * s)
    _line(layers, hx, hy + 0.02 * s, hx, top, max(0.008 * s, 0.45), np.asarray(POLE_RGB, F32))
    rx, ry = 0.27 * s, 0.15 * s
    cy = top + 0.07 * s

    def canopy(px, py):
        dome = raster.ellipse(px, py, hx, cy, F32(rx), F32(ry))
        return np.maximum(dome, py - cy)  # upper half only

    _paint_sdf(layers, (hx - rx, hx + rx, cy - ry, cy + 1), canopy, colour)
    _paint_sdf(layers, (hx - rx, hx + rx, cy - ry, cy + 1),
               lambda px, py: np.maximum(canopy(px, py), np.abs(px - hx) - 0.03 * s), colour * 0.75)


def _ball(layers: Layers, pose: Pose3D, side: float, colour: np.ndarray) -> None:
    s, ground = pose.placement.scale, pose.placement.ground
    r = 0.06 * s
    cx, cy = _col(pose.joints[:, J["pelvis"], 0]) + side * 0.27 * s, F32(ground - r)
    box = (cx - r, cx + r, cy - r, cy + r)
    _paint_sdf(layers, box, lambda px, py: raster.ellipse(px, py, cx, cy, F32(r), F32(r)), colour)
    _paint_sdf(layers, box, lambda px, py: np.maximum(raster.ellipse(px, py, cx, cy, F32(r), F32(r)),
                                                      np.abs(py - cy) - 0.28 * r),
               np.asarray((250, 250, 250), F32))


def _dog(layers: Layers, pose: Pose3D, side: float, colour: np.ndarray, t: np.ndarray) -> None:
    s, ground = pose.placement.scale, pose.placement.ground
    x = _col(pose.joints[:, J["pelvis"], 0]) + side * 0.38 * s
    face = -side  # the dog looks at the person
    dark = colour * 0.7
    wag = _col(np.sin(2 * np.pi * 2.5 * t))  # (F, 1, 1)
    step = _col(np.sin(2 * np.pi * 1.5 * t))
    body_y = ground - 0.12 * s
    for i, off in enumerate((-0.075, -0.045, 0.045, 0.075)):  # legs, far pair darker
        foot = x + face * off * s + (1 if i % 2 else -1) * 0.012 * s * step
        _line(layers, x + face * off * s, body_y, foot, F32(ground - 0.012 * s), max(0.016 * s, 0.5),
              dark if i in (0, 2) else colour)
    _line(layers, x - face * 0.09 * s, body_y - 0.005 * s, x - face * (0.15 * s) + 0.02 * s * wag,
          F32(ground - 0.22 * s), max(0.014 * s, 0.45), colour)  # tail
    _line(layers, x - face * 0.085 * s, body_y, x + face * 0.075 * s, body_y, max(0.048 * s, 0.8), colour)
    hx, hy = x + face * 0.12 * s, ground - 0.2 * s
    _line(layers, x + face * 0.07 * s, body_y, hx, hy, max(0.03 * s, 0.6), colour)  # neck
    _paint_sdf(layers, (hx - 0.06 * s, hx + 0.06 * s, hy - 0.06 * s, hy + 0.06 * s),
               lambda px, py: raster.ellipse(px, py, hx, F32(hy), F32(0.046 * s), F32(0.043 * s)), colour)
    _line(layers, hx, hy + 0.01 * s, hx + face * 0.065 * s, hy + 0.02 * s, max(0.022 * s, 0.5), colour)  # snout
    _line(layers, hx - face * 0.015 * s, hy - 0.03 * s, hx - face * 0.03 * s, hy + 0.02 * s,
          max(0.016 * s, 0.45), dark)  # ear
    nx, ny = hx + face * 0.085 * s, hy + 0.018 * s
    _line(layers, nx, ny, nx, ny, max(0.012 * s, 0.4), np.asarray(DARK_RGB, F32))  # nose
    ex, ey = hx + face * 0.02 * s, hy - 0.01 * s
    _line(layers, ex, ey, ex, ey, max(0.009 * s, 0.35), np.asarray(DARK_RGB, F32))  # eye


def draw_objects(layers: Layers, pose: Pose3D, objects: tuple[ObjectSpec, ...], hands: tuple[str, str],
                 t: np.ndarray, ground_side: float) -> None:
    """Draw the clip's objects onto all frames (behind the figure): held ones in `hands` order."""
    held = [o for o in objects if o.kind in HELD_OBJECTS]
    ground = [o for o in objects if o.kind in GROUND_OBJECTS]
    for obj, hand in zip(held, hands):
        draw = _balloon if obj.kind == "balloon" else _umbrella
        with layers.part(OBJECT_LABELS[obj.kind]):
            draw(layers, pose, hand, _rgb(obj.colour))
    for obj, side in zip(ground, (ground_side, -ground_side)):
        with layers.part(OBJECT_LABELS[obj.kind]):
            if obj.kind == "ball":
                _ball(layers, pose, side, _rgb(obj.colour))
            else:
                _dog(layers, pose, side, _rgb(obj.colour), t)
