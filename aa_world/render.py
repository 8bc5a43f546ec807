"""Drawing the articulated 2.5-D figure of an identity over a clip's frames (all frames at once).

Parts are signed-distance shapes (capsules, ellipses, rounded trapezoids) with a 1-pixel smooth
edge. Depth order follows the pose: per frame, the limb further from the camera is drawn first
(and slightly darker), arms swing in front of or behind the torso by their depth, the torso
narrows with |cos(yaw)|, eyes and the chest logo appear only in front views, the backpack only
in back views, and hair covers the part of the head that faces up or away from the camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aa_runtime.skeleton import BACK, FRONT, J, Pose3D, view_index

from . import raster
from .identity import COLOUR_RGB, HAIR_RGB, NONE, SKIN_RGB, Identity
from .parts import part_id
from .raster import Layers

F32 = np.float32
EYE_RGB = (35, 25, 25)
SHADE = 0.22  # how much darker the far limb is at full depth separation
MIN_RADIUS = 0.6  # pixels: thinner parts would vanish at 64×64
HAIR, SKIN, SHIRT, LOWER, SHOES, HAT, LOGO, BACKPACK = map(
    part_id, ("hair", "skin", "shirt", "lower", "shoes", "hat", "logo", "backpack"))


@dataclass(frozen=True)
class FigureInfo:
    """Per-frame view ground truth of a drawn figure."""

    view: np.ndarray  # (F,) int index into skeleton.VIEWS
    logo_visible: np.ndarray  # (F,) bool
    backpack_visible: np.ndarray  # (F,) bool


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOUR_RGB[name], F32)


def _col(a: np.ndarray) -> np.ndarray:
    """(F,) → (F, 1, 1) float32 for broadcasting against (F, h, w) pixels."""
    return np.asarray(a, F32)[:, None, None]


def _shaded(colour: np.ndarray, k) -> np.ndarray:
    """Colour (3,) times a per-frame factor k (F, 1, 1) → channel-first (3, F, 1, 1); a scalar k keeps (3,)."""
    if np.isscalar(k):
        return colour * F32(k)
    return colour[:, None, None, None] * k[None]


class _Figure:
    """Per-clip drawing state: projected joints as (F, 1, 1) columns, sizes in pixels."""

    def __init__(self, layers: Layers, pose: Pose3D, identity: Identity):
        self.layers, self.pose, self.id = layers, pose, identity
        self.s = pose.placement.scale
        self.body = identity.body
        self.limb = self.s * self.body.limb
        j = pose.joints  # (F, J, 3)
        self.x = {n: _col(j[:, i, 0]) for n, i in J.items()}
        self.y = {n: _col(j[:, i, 1]) for n, i in J.items()}
        self.z = {n: j[:, i, 2] for n, i in J.items()}  # (F,)
        yaw = pose.yaw.astype(np.float64)
        self.cos, self.sin = np.cos(yaw), np.sin(yaw)
        self.acos, self.asin = _col(np.abs(self.cos)), _col(np.abs(self.sin))
        self.view = view_index(pose.yaw)
        self.skin = np.asarray(SKIN_RGB[identity.skin], F32)

    def r(self, k: float) -> float:
        """A limb radius of k figure heights (× the identity's thickness), at least MIN_RADIUS pixels."""
        return max(k * self.limb, MIN_RADIUS)

    def width(self, half_width: float, half_depth: float) -> np.ndarray:
        """Projected half-width (F, 1, 1) in pixels of an elliptical body section: shrinks with |cos(yaw)|."""
        return np.sqrt((half_width * self.acos) ** 2 + (half_depth * self.asin) ** 2) * self.s

    def side(self, far: np.ndarray, name: str):
        """(x, y) columns of joint `name` ('*' = side) on the far (far=True) or near side, per frame."""
        rx, ry = self.x[name.replace("*", "r")], self.y[name.replace("*", "r")]
        lx, ly = self.x[name.replace("*", "l")], self.y[name.replace("*", "l")]
        m = far[:, None, None]
        return np.where(m, rx, lx), np.where(m, ry, ly)

    def capsules(self, caps):
        """Max coverage (F, h, w) of several capsules (ax, ay, bx, by, ra, rb) in their union box."""
        x0 = min(np.min(np.minimum(c[0], c[2])) - max(c[4], c[5]) for c in caps)
        x1 = max(np.max(np.maximum(c[0], c[2])) + max(c[4], c[5]) for c in caps)
        y0 = min(np.min(np.minimum(c[1], c[3])) - max(c[4], c[5]) for c in caps)
        y1 = max(np.max(np.maximum(c[1], c[3])) + max(c[4], c[5]) for c in caps)
        reg = self.layers.region(x0, x1, y0, y1)
        if reg is None:
            return None, None
        cov = None
        for ax, ay, bx, by, ra, rb in caps:
            c = raster.coverage(raster.capsule(reg.px, reg.py, ax, ay, bx, by, ra, rb if rb != ra else None))
            cov = c if cov is None else np.maximum(cov, c, out=cov)
        return reg, cov

    # --- parts ---------------------------------------------------------------------------------

    def shadow(self) -> None:
        """A soft dark ellipse on the ground under the body (not part of the person)."""
        gy = self.pose.placement.ground
        feet = np.maximum(self.y["r_ankle"], self.y["l_ankle"]) + self.body.ankle * self.s
        fade = np.clip(1.0 - 3.0 * (gy - feet) / self.s, 0.2, 1.0)
        cx = self.x["pelvis"]
        rx, ry = 0.17 * self.s, max(0.035 * self.s, 1.0)
        reg = self.layers.region(cx - rx, cx + rx, gy - ry, gy + ry)
        if reg is not None:
            d = raster.ellipse(reg.px, reg.py, cx, F32(gy), F32(rx), F32(ry))
            self.layers.darken(reg, raster.coverage(d) * fade, 0.35)

    def limb_order(self, a: str, b: str, c: str):
        """Per frame: is the right limb (joints a, b, c) the far one, and a shading factor (F, 1, 1)."""
        zr = (self.z[f"r_{a}"] + self.z[f"r_{b}"] + self.z[f"r_{c}"]) / 3
        zl = (self.z[f"l_{a}"] + self.z[f"l_{b}"] + self.z[f"l_{c}"]) / 3
        shade = 1.0 - SHADE * np.clip(np.abs(zr - zl) / (0.1 * self.s), 0.0, 1.0)
        return zr < zl, _col(shade)

    def arms(self):
        """Far and near arm: coverage of (sleeve, forearm + hand), in-front-of-torso flag, shading."""
        r_far, shade = self.limb_order("shoulder", "elbow", "wrist")
        z_torso = (self.z["neck"] + self.z["pelvis"]) / 2
        sleeve_r, fore_r, hand_r = self.r(0.03), self.r(0.024), self.r(0.03)
        out = []
        for far, k in ((r_far, shade), (~r_far, 1.0)):
            sx, sy = self.side(far, "*_shoulder")
            ex, ey = self.side(far, "*_elbow")
            wx, wy = self.side(far, "*_wrist")
            hx, hy = wx + 0.18 * (wx - ex), wy + 0.18 * (wy - ey)
            z_arm = np.where(far, self.z["r_elbow"] + self.z["r_wrist"], self.z["l_elbow"] + self.z["l_wrist"]) / 2
            in_front = _col(z_arm > z_torso + 0.02 * self.s)
            upper = self.capsules([(sx, sy, ex, ey, sleeve_r, sleeve_r * 0.9)])
            lower = self.capsules([(ex, ey, wx, wy, fore_r, fore_r * 0.9), (hx, hy, hx, hy, hand_r, hand_r)])
            out.append((upper, lower, in_front, k))
        return out

    def paint_arms(self, arms, front: bool) -> None:
        """Paint the arms that are behind (front=False) or in front of (front=True) the torso, far first."""
        sleeve = _rgb(self.id.shirt_colour)
        for upper, lower, in_front, k in arms:
            gate = in_front if front else 1.0 - in_front
            if not np.any(gate):
                continue
            for (reg, cov), colour, part in ((upper, sleeve, SHIRT), (lower, self.skin, SKIN)):
                if reg is not None:
                    with self.layers.part(part):
                        self.layers.paint(reg, cov * gate, _shaded(colour, k))

    def legs(self) -> None:
        """Far leg then near leg (trousers, or skin under a skirt), each with its shoe."""
        r_far, shade = self.limb_order("hip", "knee", "ankle")
        skirt = self.id.lower_garment == "skirt"
        colour, part = (self.skin, SKIN) if skirt else (_rgb(self.id.lower_colour), LOWER)
        shoe = _rgb(self.id.shoe_colour)
        thigh_a, thigh_b = self.r(0.045), self.r(0.038)
        shin_a, shin_b = self.r(0.035), self.r(0.028)
        sole = 0.012 * self.s
        for far, k in ((r_far, shade), (~r_far, 1.0)):
            hx, hy = self.side(far, "*_hip")
            kx, ky = self.side(far, "*_knee")
            ax, ay = self.side(far, "*_ankle")
            tx, ty = self.side(far, "*_toe")
            reg, cov = self.capsules([(hx, hy, kx, ky, thigh_a, thigh_b), (kx, ky, ax, ay, shin_a, shin_b)])
            if reg is not None:
                with self.layers.part(part):
                    self.layers.paint(reg, cov, _shaded(colour, k))
            reg, cov = self.capsules([(ax, ay + sole, tx, ty + sole, self.r(0.026), self.r(0.026))])
            if reg is not None:
                with self.layers.part(SHOES):
                    self.layers.paint(reg, cov, _shaded(shoe, k))

    def skirt(self) -> None:
        """A flared skirt from the waist to above the knees."""
        b, s = self.body, self.s
        px, py = self.x["pelvis"], self.y["pelvis"]
        top_y, bot_y = py - 0.04 * s, py + 0.2 * s
        wt = self.width(b.hip + 0.028, b.depth + 0.005)
        wb = self.width(b.hip + 0.085, b.depth + 0.035)
        reg = self.layers.region(px - wb, px + wb, top_y, bot_y)
        if reg is None:
            return
        d, _ = raster.tapered_box(reg.px, reg.py, px, top_y, px, bot_y, wt, wb, 0.015 * s)
        self.layers.paint(reg, raster.coverage(d), _rgb(self.id.lower_colour))

    def torso(self) -> None:
        """The shirt: a rounded trapezoid from the shoulders to the hips, narrowing in side views."""
        b = self.body
        nx, ny, px, py = self.x["neck"], self.y["neck"], self.x["pelvis"], self.y["pelvis"]
        tx, ty = nx + 0.08 * (nx - px), ny + 0.08 * (ny - py)
        bx, by = px + 0.06 * (px - nx), py + 0.06 * (py - ny)
        wt = self.width(b.shoulder + 0.012 * b.limb, b.depth)
        wb = self.width(b.hip + 0.03, b.depth * 0.95)
        rr = 0.45 * np.minimum(wt, wb)
        pad = np.maximum(wt, wb)
        reg = self.layers.region(np.minimum(tx, bx) - pad, np.maximum(tx, bx) + pad,
                                 np.minimum(ty, by) - pad, np.maximum(ty, by) + pad)
        if reg is None:
            return
        d, along = raster.tapered_box(reg.px, reg.py, tx, ty, bx, by, wt, wb, rr)
        cov = raster.coverage(d)
        a = _rgb(self.id.shirt_colour)
        pattern = self.id.shirt_pattern
        if pattern == "solid":
            self.layers.paint(reg, cov, a)
            return
        length = np.sqrt((bx - tx) ** 2 + (by - ty) ** 2)
        if pattern == "stripes":  # horizontal bands at least 2 px wide, 1-px smooth edges
            period = np.maximum(length / 3.2, 4.0)
            tri = np.abs(np.mod(along / period, 1.0) - 0.5)
            w = np.clip(0.5 + (tri - 0.25) * period, 0.0, 1.0)
        else:  # two-tone: upper half one colour, lower half the other
            w = np.clip(0.5 + along - 0.5 * length, 0.0, 1.0)
        colour = a[:, None, None, None] + w[None] * (_rgb(self.id.shirt_colour2) - a)[:, None, None, None]
        # (3, F, h, w) channel-first, per pixel
        self.layers.paint(reg, cov, colour)

    def logo(self) -> np.ndarray:
        """The chest logo, drawn only in front views; returns where it is visible (F,) bool."""
        visible = (self.view == FRONT) if self.id.logo_shape != NONE else np.zeros(self.pose.frames, bool)
        if not visible.any():
            return visible
        cx, cy = self.x["chest"], self.y["chest"]
        hs = max(0.042 * self.s, 1.2)
        sx = hs * self.acos
        reg = self.layers.region(cx - hs, cx + hs, cy - hs, cy + hs)
        if reg is None:
            return visible
        shape = self.id.logo_shape
        if shape == "circle":
            d = raster.ellipse(reg.px, reg.py, cx, cy, sx, F32(hs))
        elif shape == "square":
            d = raster.box(reg.px, reg.py, cx, cy, 0.88 * sx, 0.88 * hs)
        else:
            d = raster.triangle(reg.px, reg.py, cx, cy - hs, cx - sx, cy + 0.8 * hs, cx + sx, cy + 0.8 * hs)
        self.layers.paint(reg, raster.coverage(d) * _col(visible), _rgb(self.id.logo_colour))
        return visible

    def backpack(self) -> np.ndarray:
        """The backpack, drawn only in back views; returns where it is visible (F,) bool."""
        visible = (self.view == BACK) if self.id.backpack != NONE else np.zeros(self.pose.frames, bool)
        if not visible.any():
            return visible
        s = self.s
        cx, cy = self.x["back"], self.y["back"]
        hx, hy = 0.075 * s * self.acos + 0.01 * s, 0.1 * s
        reg = self.layers.region(cx - hx, cx + hx, cy - hy, cy + hy)
        if reg is None:
            return visible
        gate = _col(visible)
        colour = _rgb(self.id.backpack)
        d = raster.box(reg.px, reg.py, cx, cy, hx, F32(hy), 0.025 * s)
        self.layers.paint(reg, raster.coverage(d) * gate, colour)
        d = raster.box(reg.px, reg.py, cx, cy + 0.5 * hy, 0.7 * hx, F32(0.32 * hy), 0.015 * s)
        self.layers.paint(reg, raster.coverage(d) * gate, colour * 0.72)
        return visible

    def neck(self) -> None:
        """Skin between the shoulders and the head."""
        reg, cov = self.capsules([(self.x["neck"], self.y["neck"], self.x["head"], self.y["head"],
                                   self.r(0.027), self.r(0.027))])
        if reg is not None:
            self.layers.paint(reg, cov, self.skin)

    def hair_back(self, behind: bool) -> None:
        """Long hair falling to the shoulders and the ponytail; behind the head unless seen from the back."""
        style = self.id.hair_style
        if style not in ("long", "ponytail"):
            return
        r = self.body.head * self.s
        hx, hy, hz = self.x["head"], self.y["head"], self.z["head"]
        # the body's backward direction after the turn: image x component −sin(yaw), depth −cos(yaw)
        back_x, back_z = _col(-self.sin), -self.cos
        if style == "long":
            ax, ay = hx + back_x * 0.15 * r, hy
            ex, ey = hx + back_x * 0.35 * r, hy + 1.55 * r
            rad = 0.98 * r
            z = hz + back_z * 0.3 * r
        else:
            ax, ay = hx + back_x * 0.95 * r, hy - 0.1 * r
            ex, ey = hx + back_x * 1.3 * r, hy + 1.35 * r
            rad = 0.36 * r
            z = hz + back_z * 1.0 * r
        show = (self.view == BACK) if style == "long" else (z > hz + 0.05 * r)
        gate = _col(~show if behind else show)
        if not np.any(gate):
            return
        reg, cov = self.capsules([(ax, ay, ex, ey, rad, rad * 0.85)])
        if reg is not None:
            self.layers.paint(reg, cov * gate, np.asarray(HAIR_RGB[self.id.hair_colour], F32))

    def head(self) -> None:
        """Head (skin), the hair cap over the part of the head facing up/away, eyes in front views."""
        r = self.body.head * self.s
        rx, ry = r, 1.1 * r
        cx, cy = self.x["head"], self.y["head"]
        reg = self.layers.region(cx - rx, cx + rx, cy - ry, cy + ry)
        if reg is None:
            return
        d = raster.ellipse(reg.px, reg.py, cx, cy, F32(rx), F32(ry))
        self.layers.paint(reg, raster.coverage(d), self.skin)
        style = self.id.hair_style
        if style != "bald":
            # sphere normal at each pixel (camera frame), turned into the body frame by -yaw
            nx = (reg.px - cx) / rx
            ny = (reg.py - cy) / ry
            nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
            fwd = _col(self.sin) * nx + _col(self.cos) * nz  # (F, h, w) forward component
            base, slope = {"short": (-0.05, 0.42), "long": (-0.25, 0.55), "ponytail": (-0.1, 0.45)}[style]
            up = -ny
            hair = np.clip(0.5 + (up - (base + slope * fwd)) * r, 0.0, 1.0)
            cov = raster.coverage(raster.ellipse(reg.px, reg.py, cx, cy, F32(rx * 1.04), F32(ry * 1.04)))
            with self.layers.part(HAIR):
                self.layers.paint(reg, cov * hair, np.asarray(HAIR_RGB[self.id.hair_colour], F32))

    def eyes(self) -> None:
        """Two dark dots, front views only."""
        front = _col(self.view == FRONT)
        if not np.any(front):
            return
        rad = max(0.13 * self.body.head * self.s, 0.45)
        for name in ("r_eye", "l_eye"):
            ex, ey = self.x[name], self.y[name]
            reg = self.layers.region(ex - rad, ex + rad, ey - rad, ey + rad)
            if reg is not None:
                d = raster.ellipse(reg.px, reg.py, ex, ey, F32(rad), F32(rad))
                self.layers.paint(reg, raster.coverage(d) * front, np.asarray(EYE_RGB, F32))

    def hat(self) -> None:
        """A brimmed hat (rotationally symmetric, so the same from every side)."""
        if self.id.hat == NONE:
            return
        r = self.body.head * self.s
        cx, cy = self.x["head"], self.y["head"]
        brim_y = cy - 0.55 * r
        reg = self.layers.region(cx - 1.5 * r, cx + 1.5 * r, brim_y - 1.0 * r, brim_y + 0.3 * r)
        if reg is None:
            return
        colour = _rgb(self.id.hat)
        crown = raster.box(reg.px, reg.py, cx, brim_y - 0.45 * r, F32(0.8 * r), F32(0.5 * r), F32(0.3 * r))
        brim = raster.ellipse(reg.px, reg.py, cx, brim_y, F32(1.45 * r), F32(max(0.22 * r, 0.7)))
        self.layers.paint(reg, raster.coverage(np.minimum(crown, brim)), colour)
        band = raster.box(reg.px, reg.py, cx, brim_y - 0.18 * r, F32(0.8 * r), F32(max(0.12 * r, 0.5)))
        self.layers.paint(reg, raster.coverage(band), colour * 0.7)


def draw_figure(layers: Layers, pose: Pose3D, identity: Identity) -> FigureInfo:
    """Paint `identity` in `pose` onto all frames of `layers` (back to front); returns the view truth.
    `layers.labels` gets each pixel's part (aa_world.parts) as it is painted: the topmost part wins."""
    fig = _Figure(layers, pose, identity)
    fig.shadow()
    with layers.part(HAIR):
        fig.hair_back(behind=True)
    arms = fig.arms()
    fig.paint_arms(arms, front=False)
    fig.legs()
    if identity.lower_garment == "skirt":
        with layers.part(LOWER):
            fig.skirt()
    with layers.part(SKIN):
        fig.neck()
    with layers.part(SHIRT):
        fig.torso()
    with layers.part(LOGO):
        logo_visible = fig.logo()
    with layers.part(BACKPACK):
        backpack_visible = fig.backpack()
    if identity.hair_style == "long":  # long hair falls over the back (and backpack) in back views
        with layers.part(HAIR):
            fig.hair_back(behind=False)
    with layers.part(SKIN):
        fig.head()  # the hair cap inside switches to HAIR
    if identity.hair_style == "ponytail":  # the ponytail hangs over the back of the head
        with layers.part(HAIR):
            fig.hair_back(behind=False)
    with layers.part(SKIN):
        fig.eyes()
    with layers.part(HAT):
        fig.hat()
    fig.paint_arms(arms, front=True)
    return FigureInfo(view=fig.view, logo_visible=logo_visible, backpack_visible=backpack_visible)
