"""The figure's kinematic model (used by the built-in motions and the synthetic world's renderer): joint angles →
3-D joints → image coordinates, OpenPose-18 keypoints, views.

Body frame: x = the person's left, y = up, z = the person's forward; lengths in figure heights.
The body turns by `yaw` about the vertical axis (yaw 0 faces the camera, ±π shows the back) and
is projected orthographically. Image space: x right and y down in pixels, z towards the camera.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .poses import OPENPOSE18  # the one keypoint order the runtime reads

F32 = np.float32

# Internal joints: the 18 keypoints plus what drawing needs.
JOINTS = OPENPOSE18 + ("pelvis", "head", "r_toe", "l_toe", "chest", "back")
J = {name: i for i, name in enumerate(JOINTS)}

VIEWS = ("front", "side", "back")
FRONT, SIDE, BACK = 0, 1, 2


@dataclass(frozen=True)
class Body:
    """Body proportions in units of the figure's height (sole to crown); `height` is a fraction of the frame."""

    height: float = 0.68
    head: float = 0.068  # head radius
    neck: float = 0.035
    torso: float = 0.29  # pelvis to neck (mid-shoulders)
    shoulder: float = 0.1  # half shoulder width
    hip: float = 0.06  # half hip width
    depth: float = 0.06  # half torso depth (front to back)
    upper_arm: float = 0.165
    forearm: float = 0.15
    thigh: float = 0.245
    shin: float = 0.235
    ankle: float = 0.04  # ankle height above the sole
    limb: float = 1.0  # limb thickness multiplier

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"Body.{name}={value!r}: proportions must be positive finite numbers")


DEFAULT_BODY = Body()


@dataclass(frozen=True)
class MotionAngles:
    """Per-frame joint angles of one motion; arrays (F,) unless noted, angles in radians.

    A limb row (F, 4) is (swing1, spread1, swing2, spread2): the upper and lower segment directions,
    swing forward from hanging down, spread outwards to the side (see `limb_direction`).
    """

    x: np.ndarray  # (F,) horizontal offset of the body in figure heights (walk/run drift)
    lift: np.ndarray  # (F,) feet above the ground in figure heights (jumps)
    yaw: np.ndarray  # (F,) facing: 0 = towards the camera, ±π = away
    lean: np.ndarray  # (F,) torso pitch forward
    roll: np.ndarray  # (F,) torso tilt towards the person's left
    arm_r: np.ndarray  # (F, 4)
    arm_l: np.ndarray  # (F, 4)
    leg_r: np.ndarray  # (F, 4)
    leg_l: np.ndarray  # (F, 4)
    hands: tuple[str, str] = ("r", "l")  # hands in the order held objects are given to them


@dataclass(frozen=True)
class Placement:
    """Where the figure stands in the frame: centre x and ground y in pixels, pixels per figure height."""

    cx: float
    ground: float
    scale: float


@dataclass(frozen=True)
class Pose3D:
    """Joints of a clip in image space, float32 (F, len(JOINTS), 3) as (x, y, z) pixels, plus facing."""

    joints: np.ndarray  # (F, J, 3)
    yaw: np.ndarray  # (F,) radians, wrapped to (-π, π]
    placement: Placement
    body: Body

    @property
    def frames(self) -> int:
        return int(self.joints.shape[0])


def limb_direction(swing: np.ndarray, spread: np.ndarray, side: float) -> np.ndarray:
    """Unit direction (F, 3) in the body frame: hanging down, swung forward, spread out (side +1 left, -1 right)."""
    cs = np.cos(spread)
    return np.stack([side * np.sin(spread), -cs * np.cos(swing), cs * np.sin(swing)], axis=-1)


def _torso_rotation(lean: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotation Rx(lean) · Rz(roll) of the torso frame."""
    cl, sl, cr, sr = np.cos(lean), np.sin(lean), np.cos(roll), np.sin(roll)
    zero, one = np.zeros_like(lean), np.ones_like(lean)
    rz = np.stack([np.stack([cr, sr, zero], -1), np.stack([-sr, cr, zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cl, -sl], -1),
                   np.stack([zero, sl, cl], -1)], -2)
    return rx @ rz


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to (-π, π]."""
    return (np.pi - np.mod(np.pi - np.asarray(a, np.float64), 2 * np.pi)).astype(F32)


def forward_kinematics(angles: MotionAngles, body: Body, placement: Placement) -> Pose3D:
    """Joint angles + body proportions → image-space joints (feet on the ground unless lifted)."""
    f = angles.yaw.shape[0]
    rot = _torso_rotation(angles.lean.astype(np.float64), angles.roll.astype(np.float64))  # (F, 3, 3)
    up, left, fwd = rot[:, :, 1], rot[:, :, 0], rot[:, :, 2]  # (F, 3) torso axes in the body frame
    hip_left = np.stack([np.cos(angles.roll), -np.sin(angles.roll), np.zeros(f)], -1)  # pelvis tilts with roll
    p = np.zeros((f, len(JOINTS), 3))  # (F, J, 3) body frame, pelvis at the origin

    neck = body.torso * up
    head = neck + (body.neck + 1.1 * body.head) * up
    p[:, J["pelvis"]] = 0.0
    p[:, J["neck"]] = neck
    p[:, J["head"]] = head

    def head_point(lx, uy, fz):
        return head + body.head * (lx * left + uy * up + fz * fwd)

    p[:, J["nose"]] = head_point(0.0, -0.15, 0.95)
    p[:, J["r_eye"]] = head_point(-0.36, 0.12, 0.9)
    p[:, J["l_eye"]] = head_point(0.36, 0.12, 0.9)
    p[:, J["r_ear"]] = head_point(-0.88, 0.0, -0.1)
    p[:, J["l_ear"]] = head_point(0.88, 0.0, -0.1)
    p[:, J["chest"]] = neck - 0.3 * body.torso * up + body.depth * fwd
    p[:, J["back"]] = neck - 0.42 * body.torso * up - body.depth * fwd

    for side, sign, arm, leg in (("r", -1.0, angles.arm_r, angles.leg_r), ("l", 1.0, angles.arm_l, angles.leg_l)):
        arm, leg = arm.astype(np.float64), leg.astype(np.float64)
        shoulder = neck + sign * body.shoulder * left
        elbow = shoulder + body.upper_arm * limb_direction(arm[:, 0], arm[:, 1], sign)
        wrist = elbow + body.forearm * limb_direction(arm[:, 2], arm[:, 3], sign)
        hip = sign * body.hip * hip_left
        knee = hip + body.thigh * limb_direction(leg[:, 0], leg[:, 1], sign)
        ankle = knee + body.shin * limb_direction(leg[:, 2], leg[:, 3], sign)
        p[:, J[f"{side}_shoulder"]], p[:, J[f"{side}_elbow"]], p[:, J[f"{side}_wrist"]] = shoulder, elbow, wrist
        p[:, J[f"{side}_hip"]], p[:, J[f"{side}_knee"]], p[:, J[f"{side}_ankle"]] = hip, knee, ankle
        p[:, J[f"{side}_toe"]] = ankle + np.array([0.0, -0.025, 0.065])

    # stand on the ground: the lower ankle sits `body.ankle` above it, plus the lift of a jump
    lowest = np.minimum(p[:, J["r_ankle"], 1], p[:, J["l_ankle"], 1])  # (F,)
    p[:, :, 1] += (body.ankle - lowest + angles.lift)[:, None]

    # turn about the vertical axis, then project orthographically into the image
    yaw = angles.yaw.astype(np.float64)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    wx = c * p[..., 0] + s * p[..., 2] + angles.x[:, None]
    wz = -s * p[..., 0] + c * p[..., 2]
    img = np.stack([placement.cx + wx * placement.scale,
                    placement.ground - p[..., 1] * placement.scale,
                    wz * placement.scale], -1)  # (F, J, 3)
    return Pose3D(joints=img.astype(F32), yaw=wrap_angle(yaw), placement=placement, body=body)


def view_index(yaw: np.ndarray) -> np.ndarray:
    """(F,) int: 0 front (|yaw| ≤ 45°), 2 back (|yaw| ≥ 135°), 1 side otherwise."""
    a = np.abs(wrap_angle(yaw))
    return np.where(a <= np.pi / 4, FRONT, np.where(a >= 3 * np.pi / 4, BACK, SIDE)).astype(np.int64)


def keypoints18(pose: Pose3D, width: int, height: int) -> np.ndarray:
    """OpenPose-18 keypoints float32 (F, 18, 3) as (x, y, conf) in pixels; hidden or off-frame joints get conf 0."""
    kp = np.zeros((pose.frames, 18, 3), F32)
    kp[:, :, :2] = pose.joints[:, :18, :2]
    conf = np.ones((pose.frames, 18), F32)
    view = view_index(pose.yaw)
    back, side = view == BACK, view == SIDE
    for name in ("nose", "r_eye", "l_eye"):
        conf[back, OPENPOSE18.index(name)] = 0.0
    # in a side view the eye and ear on the far side of the head are hidden
    r_far = pose.joints[:, J["r_ear"], 2] < pose.joints[:, J["l_ear"], 2]  # (F,)
    for r_name, l_name in (("r_eye", "l_eye"), ("r_ear", "l_ear")):
        conf[side & r_far, OPENPOSE18.index(r_name)] = 0.0
        conf[side & ~r_far, OPENPOSE18.index(l_name)] = 0.0
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    kp[..., 2] = conf * inside
    kp[..., :2] *= (kp[..., 2:3] > 0)  # missing joints are (0, 0, 0), as OpenPose writes them
    return kp
