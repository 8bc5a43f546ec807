"""The built-in parametric motions (`aa-run --motion`; the synthetic world renders its people in them): joint
angles as functions of time t (seconds).

Each motion maps frame times to `MotionAngles`; a per-clip generator varies speed, phase, facing
and (for wave) the hand. `dance` and `turn` start near the front and rotate through whole turns
(one per clip up to 4.5 s, ~3 s each in longer clips, at most one per 1.5 s), so front, side and
back views all occur in any clip of ≥ 1 s; `walk` and `run` drift sideways along their heading.
`motion_keypoints` is what `aa-run --motion NAME` uses to drive generation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .skeleton import DEFAULT_BODY, Body, MotionAngles, Placement, Pose3D, forward_kinematics, keypoints18

F32 = np.float32
MOTIONS = ("walk", "run", "wave", "jump", "dance", "turn", "squat")

MIN_SIZE, MAX_SIZE = 16, 4096


def _deg(x):
    return np.deg2rad(x)


def _limb(swing1, spread1, swing2, spread2, frames: int) -> np.ndarray:
    """Stack four angle curves (degrees, scalars or (F,)) into a (F, 4) radians limb row."""
    cols = [np.broadcast_to(np.asarray(v, np.float64), (frames,)) for v in (swing1, spread1, swing2, spread2)]
    return _deg(np.stack(cols, axis=-1))


def _heading(rng: np.random.Generator, choices_deg, jitter_deg: float) -> float:
    """A facing angle (radians) drawn from a few headings plus jitter."""
    return float(_deg(choices_deg[int(rng.integers(len(choices_deg)))] + rng.uniform(-jitter_deg, jitter_deg)))


def _turn_period(duration: float) -> float:
    """Seconds per full turn: a whole number of ~3 s turns over the clip, never faster than 1.5 s per turn."""
    turns = max(1, round(duration / 3.0))
    return max(duration / turns, 1.5)


def _gait(t, duration, rng, max_drift, *, hz, thigh, knee, arm, elbow, lean, bounce, speed) -> MotionAngles:
    """Walk and run: legs and arms in anti-phase, knees bend in the swing, drift along the heading."""
    f = t.shape[0]
    k = rng.uniform(0.9, 1.1)
    p = 2 * np.pi * hz * k * t + rng.uniform(0, 2 * np.pi)  # (F,) gait phase of the right leg
    yaw = _heading(rng, (0, 30, -30, 90, -90, 90, -90, 150, -150, 180), 8.0)
    legs = []
    for ph in (p, p + np.pi):
        swing1 = thigh * np.sin(ph)
        flex = 6 + knee * np.maximum(np.cos(ph), 0.0) ** 1.3
        legs.append(_limb(swing1, 3, swing1 - flex, 3, f))
    arms = []
    for ph in (p + np.pi, p):
        swing1 = arm * np.sin(ph)
        arms.append(_limb(swing1, 7, swing1 + elbow, 7, f))
    v = min(speed * k, max_drift / max(duration, 1e-6))  # figure heights per second
    x = np.sin(yaw) * v * (t - duration / 2)
    lift = bounce * np.maximum(np.sin(2 * p), 0.0)
    zeros = np.zeros(f)
    return MotionAngles(x=x, lift=lift, yaw=np.full(f, yaw), lean=np.full(f, _deg(lean)), roll=zeros,
                        arm_r=arms[0], arm_l=arms[1], leg_r=legs[0], leg_l=legs[1])


def walk(t, duration, rng, max_drift) -> MotionAngles:
    """Walking along a heading (towards, across or away from the camera)."""
    return _gait(t, duration, rng, max_drift, hz=0.9, thigh=25, knee=42, arm=22, elbow=18, lean=3,
                 bounce=0.0, speed=0.5)


def run(t, duration, rng, max_drift) -> MotionAngles:
    """Running: faster, larger swings, bent elbows, forward lean and short airborne phases."""
    return _gait(t, duration, rng, max_drift, hz=1.35, thigh=40, knee=85, arm=38, elbow=80, lean=10,
                 bounce=0.03, speed=1.0)


def wave(t, duration, rng, max_drift) -> MotionAngles:
    """Standing and waving one raised hand."""
    f = t.shape[0]
    k = rng.uniform(0.85, 1.15)
    hand = "r" if rng.random() < 0.5 else "l"
    ph = 2 * np.pi * 1.5 * k * t + rng.uniform(0, 2 * np.pi)
    yaw = _deg(rng.uniform(-35, 35)) + _deg(5) * np.sin(0.4 * ph)
    waving = _limb(10, 112 + 4 * np.sin(ph), 8, 162 + 24 * np.sin(ph), f)
    resting = _limb(3, 7, 8, 7, f)
    legs = _limb(0, 4, 0, 4, f)
    zeros = np.zeros(f)
    return MotionAngles(x=zeros, lift=zeros, yaw=yaw, lean=zeros, roll=_deg(2) * np.sin(0.5 * ph),
                        arm_r=waving if hand == "r" else resting, arm_l=resting if hand == "r" else waving,
                        leg_r=legs, leg_l=legs, hands=("l", "r") if hand == "r" else ("r", "l"))


def jump(t, duration, rng, max_drift) -> MotionAngles:
    """Jumping in place: crouch, take off with the arms up, land."""
    f = t.shape[0]
    period = 1.25 / rng.uniform(0.9, 1.1)
    q = np.mod(t / period + rng.uniform(0, 1), 1.0)  # (F,) phase within one jump
    crouch = np.where(q < 0.3, np.sin(np.pi * q / 0.3), 0.0)
    crouch += np.where(q >= 0.75, 0.7 * np.sin(np.pi * (q - 0.75) / 0.25), 0.0)
    air = np.where((q >= 0.3) & (q < 0.75), np.sin(np.pi * (q - 0.3) / 0.45), 0.0)
    yaw = _heading(rng, (0, 0, 20, -20, 90, -90), 15.0)
    thigh = 55 * crouch + 15 * air
    legs = _limb(thigh, 5, thigh - (100 * crouch + 30 * air), 5, f)
    arm_swing = -35 * crouch + 10 * air
    arm_spread = 10 + 140 * air
    arms = _limb(arm_swing, arm_spread, arm_swing + 10 * crouch, arm_spread + 10 * air, f)
    zeros = np.zeros(f)
    return MotionAngles(x=zeros, lift=0.16 * air, yaw=np.full(f, yaw), lean=_deg(20) * crouch, roll=zeros,
                        arm_r=arms, arm_l=arms, leg_r=legs, leg_l=legs)


def dance(t, duration, rng, max_drift) -> MotionAngles:
    """Dancing to a beat with swaying hips, alternating arms and full turns (one per clip of ≤ 4.5 s)."""
    f = t.shape[0]
    u = t / _turn_period(duration)  # (F,) turns so far
    direction = 1.0 if rng.random() < 0.5 else -1.0
    yaw = rng.uniform(-np.pi / 5, np.pi / 5) + direction * (2 * np.pi * u + 0.3 * np.sin(4 * np.pi * u))
    w = 2 * np.pi * 1.1 * rng.uniform(0.9, 1.1)
    ph = w * t + rng.uniform(0, 2 * np.pi)
    bounce = 0.5 - 0.5 * np.cos(2 * ph)
    s = np.sin(ph)
    leg_r = _limb(15 * bounce, 8 + 6 * s, 15 * bounce - 30 * bounce, 8 + 6 * s, f)
    leg_l = _limb(15 * bounce, 8 - 6 * s, 15 * bounce - 30 * bounce, 8 - 6 * s, f)
    arm_r = _limb(20, 80 + 55 * s, 40, 115 + 55 * s, f)
    arm_l = _limb(20, 80 - 55 * s, 40, 115 - 55 * s, f)
    zeros = np.zeros(f)
    return MotionAngles(x=zeros, lift=zeros, yaw=yaw, lean=np.full(f, _deg(3)), roll=_deg(7) * s,
                        arm_r=arm_r, arm_l=arm_l, leg_r=leg_r, leg_l=leg_l)


def turn(t, duration, rng, max_drift) -> MotionAngles:
    """Turning around on the spot: full 360° turns (one per clip of ≤ 4.5 s), stepping as it turns."""
    f = t.shape[0]
    u = t / _turn_period(duration)  # (F,) turns so far
    direction = 1.0 if rng.random() < 0.5 else -1.0
    eased = u - 0.12 * np.sin(2 * np.pi * u) / (2 * np.pi)  # monotonic, slower at the ends
    yaw = rng.uniform(-np.pi / 6, np.pi / 6) + direction * 2 * np.pi * eased
    ph = 2 * np.pi * 1.4 * t + rng.uniform(0, 2 * np.pi)
    legs = []
    for p in (ph, ph + np.pi):
        step = 18 * np.maximum(np.sin(p), 0.0)
        legs.append(_limb(step, 4, -step, 4, f))
    arms = _limb(5, 14, 15, 12, f)
    zeros = np.zeros(f)
    return MotionAngles(x=zeros, lift=zeros, yaw=yaw, lean=zeros, roll=zeros,
                        arm_r=arms, arm_l=arms, leg_r=legs[0], leg_l=legs[1])


def squat(t, duration, rng, max_drift) -> MotionAngles:
    """Squatting down and up with the arms held forward for balance."""
    f = t.shape[0]
    period = 2.2 / rng.uniform(0.9, 1.1)
    depth = 0.5 - 0.5 * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))  # (F,) 0 up … 1 down
    yaw = _heading(rng, (0, 30, -30, 60, -60, 90, -90), 10.0)
    thigh = 88 * depth
    legs = _limb(thigh, 6 + 8 * depth, thigh - 118 * depth, 6 + 4 * depth, f)
    arm = 5 + 82 * depth
    arms = _limb(arm, 6, arm + 5, 6, f)
    zeros = np.zeros(f)
    return MotionAngles(x=zeros, lift=zeros, yaw=np.full(f, yaw), lean=_deg(28) * depth, roll=zeros,
                        arm_r=arms, arm_l=arms, leg_r=legs, leg_l=legs)


MOTION_FUNCTIONS: dict[str, Callable[..., MotionAngles]] = {
    "walk": walk, "run": run, "wave": wave, "jump": jump, "dance": dance, "turn": turn, "squat": squat,
}


def check_motion_args(name: str, frames: int, fps: float, width: int, height: int) -> None:
    """Raise ValueError naming the first bad argument of a motion request."""
    if name not in MOTION_FUNCTIONS:
        raise ValueError(f"motion={name!r}: use one of {', '.join(MOTIONS)}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames={frames!r}: use an integer ≥ 1")
    if not (isinstance(fps, (int, float, np.floating, np.integer)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps!r}: use a positive number")
    for what, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not MIN_SIZE <= v <= MAX_SIZE:
            raise ValueError(f"{what}={v!r}: use an integer in [{MIN_SIZE}, {MAX_SIZE}]")


def default_placement(width: int, height: int, body: Body, rng: np.random.Generator) -> Placement:
    """The figure near the frame centre, feet near the bottom, about two thirds of the height tall."""
    scale = body.height * min(height, 1.3 * width)
    cx = width * (0.5 + rng.uniform(-0.06, 0.06))
    ground = height * (0.93 + rng.uniform(-0.015, 0.01))
    return Placement(cx=float(cx), ground=float(ground), scale=float(scale))


def motion_pose(name: str, frames: int, fps: float, width: int, height: int, body: Body,
                seed: int = 0) -> tuple[Pose3D, MotionAngles]:
    """The 3-D pose sequence of `name` for `body` in a width×height frame; everything keyed by `seed`."""
    check_motion_args(name, frames, fps, width, height)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: use a non-negative integer")
    placement = default_placement(width, height, body, np.random.default_rng([seed, 2]))
    t = np.arange(frames, dtype=np.float64) / float(fps)  # (F,) seconds
    duration = frames / float(fps)
    max_drift = 0.3 * width / placement.scale  # figure heights of sideways travel over the clip
    angles = MOTION_FUNCTIONS[name](t, duration, np.random.default_rng([seed, 1]), max_drift)
    return forward_kinematics(angles, body, placement), angles


def motion_keypoints(name: str, frames: int, fps: float, width: int, height: int,
                     body: Body | None = None, seed: int = 0) -> np.ndarray:
    """OpenPose-18 keypoints float32 (F, 18, 3) of a built-in motion, pixels of a width×height frame, conf 0/1."""
    pose, _ = motion_pose(name, frames, fps, width, height, body or DEFAULT_BODY, seed)
    return keypoints18(pose, width, height)
