"""OpenPose-18 keypoints: the `.aa.json` annotation format, resampling, fitting, rendering."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .errors import AAError, short_repr
from .files import atomic_path

ANNOTATION_FORMAT = "aa-annotations/1"
# What an `.aa.json` may hold: sizes of real frames, frame rates of real footage, keypoints near the frame
MAX_FRAME_SIZE = 65536  # px
MIN_FPS, MAX_FPS = 1e-3, 1000.0
MAX_ANNOTATION_FRAMES = 100_000  # about an hour at 30 fps
MAX_COORDINATE = 1e6  # px, |x| and |y| (and conf)

# COCO-18 order used by OpenPose; "r" is the person's right.
OPENPOSE18 = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
KP = {name: i for i, name in enumerate(OPENPOSE18)}

# OpenPose's limb list (0-based) and its colours, as drawn by the OpenPose demo and ControlNet.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 85), (255, 0, 170),
)
LIMB_ALPHA = 0.6  # limbs are drawn at 60 % of their colour, joints at full colour (OpenPose style)


@dataclass
class PoseSequence:
    """Keypoints float32 (F, 18, 3) as (x, y, conf) in pixels of a width×height frame; conf 0 = missing."""

    keypoints: np.ndarray
    width: int
    height: int
    fps: float

    def __post_init__(self):
        kp = np.asarray(self.keypoints, dtype=np.float32)
        if kp.ndim != 3 or kp.shape[1:] != (18, 3):
            raise AAError("pose keypoints", f"shape {tuple(kp.shape)}",
                          "expected (frames, 18, 3) OpenPose-18 (x, y, conf)")
        if kp.shape[0] == 0:
            raise AAError("pose sequence", "0 frames", "give a pose source with at least one frame")
        if not np.isfinite(kp).all():
            raise AAError("pose keypoints", "non-finite values", "replace NaN/inf with conf 0 entries")
        if not (self.width > 0 and self.height > 0 and 0 < self.fps < math.inf):  # NaN fails every comparison
            raise AAError("pose sequence size/fps", f"{self.width}x{self.height} @ {self.fps}",
                          "width, height and fps must be positive and finite")
        self.keypoints = kp

    @property
    def frames(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass
class Annotations:
    """Contents of one `.aa.json` file: per-frame poses and mask paths, a caption, provenance."""

    width: int
    height: int
    fps: float
    keypoints: np.ndarray  # float32 (F, 18, 3)
    masks: list[str | None] = field(default_factory=list)
    caption: str = ""
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        self.keypoints = PoseSequence(self.keypoints, self.width, self.height, self.fps).keypoints
        if not self.masks:
            self.masks = [None] * self.keypoints.shape[0]
        if len(self.masks) != self.keypoints.shape[0]:
            raise AAError("annotation masks", f"{len(self.masks)} masks for {self.keypoints.shape[0]} frames",
                          "give one mask path (or null) per frame")

    def poses(self) -> PoseSequence:
        return PoseSequence(self.keypoints, self.width, self.height, self.fps)


def sidecar_path(video: str | Path) -> Path:
    """`clip.mp4` → `clip.aa.json`."""
    video = Path(video)
    return video.with_name(video.stem + ".aa.json")


def save_annotations(path: str | Path, ann: Annotations) -> Path:
    """Write `ann` as `.aa.json` (atomic); mask paths are stored as given (relative to the file's folder)."""
    doc = {
        "format": ANNOTATION_FORMAT, "width": int(ann.width), "height": int(ann.height),
        "fps": float(ann.fps), "keypoints": "openpose18",
        "frames": [{"pose": [[round(float(v), 3) for v in kp] for kp in frame], "mask": mask}
                   for frame, mask in zip(ann.keypoints, ann.masks)],
        "caption": ann.caption, "source": ann.source,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return path


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _annotation_number(doc: dict, key: str, path: Path, lo: float, hi: float, integer: bool) -> float:
    """doc[key] as a number in [lo, hi] (an integer when `integer`; 64.0 counts as one)."""
    v = doc.get(key)
    ok = _is_number(v) and lo <= v <= hi and (not integer or float(v).is_integer())  # NaN fails lo <= v
    if not ok:
        kind = "an integer" if integer else "a number"
        raise AAError(f"annotation {key}", f"{path}: {short_repr(v)}" + ("" if key in doc else " (missing)"),
                      f"\"{key}\" must be {kind} from {lo:g} to {hi:g}")
    return int(v) if integer else float(v)


def _annotation_frame(frame: object, i: int, path: Path) -> tuple[np.ndarray, str | None]:
    """One `frames` entry → keypoints float32 (18, 3) and its mask path (or None)."""
    pose = frame.get("pose") if isinstance(frame, dict) else None
    rows_ok = isinstance(pose, list) and len(pose) == 18 and all(
        isinstance(row, list) and len(row) == 3 and all(_is_number(v) for v in row) for row in pose)
    if not rows_ok:
        got = short_repr(pose) if isinstance(frame, dict) else f"{type(frame).__name__} {short_repr(frame)}"
        raise AAError("annotation frame", f"{path}: frame {i} pose is malformed ({got})",
                      "each frame needs \"pose\": 18 × [x, y, conf] numbers")
    if not all(-MAX_COORDINATE <= v <= MAX_COORDINATE for row in pose for v in row):  # NaN fails too
        raise AAError("annotation frame", f"{path}: frame {i} has NaN, inf or a value beyond ±{MAX_COORDINATE:g}",
                      "store a missing joint as [0, 0, 0] and keep coordinates in pixels of the frame")
    kp = np.array(pose, dtype=np.float32)  # (18, 3)
    mask = frame.get("mask")
    if mask is not None and not isinstance(mask, str):
        raise AAError("annotation frame", f"{path}: frame {i} mask {short_repr(mask)}",
                      "\"mask\" is a PNG path relative to the .aa.json, or null")
    return kp, mask


def load_annotations(path: str | Path) -> Annotations:
    """Read and validate an `.aa.json` file: every field is type- and range-checked before use."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AAError("annotation file", path, "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AAError("annotation file", f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})",
                      "regenerate it or fix the JSON") from None
    except RecursionError:
        raise AAError("annotation file", f"{path} nests JSON too deeply", "regenerate it") from None
    except OSError as e:
        raise AAError("annotation file", f"{path} cannot be read ({type(e).__name__})",
                      "pass an .aa.json file") from None
    if not isinstance(doc, dict) or doc.get("format") != ANNOTATION_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise AAError("annotation file format", f"{path}: {short_repr(got)}",
                      f"expected \"format\": \"{ANNOTATION_FORMAT}\"")
    if doc.get("keypoints", "openpose18") != "openpose18":
        raise AAError("annotation keypoint layout", short_repr(doc.get("keypoints")), "only 'openpose18' is supported")
    width = _annotation_number(doc, "width", path, 1, MAX_FRAME_SIZE, integer=True)
    height = _annotation_number(doc, "height", path, 1, MAX_FRAME_SIZE, integer=True)
    fps = _annotation_number(doc, "fps", path, MIN_FPS, MAX_FPS, integer=False)
    frames = doc.get("frames")
    if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_ANNOTATION_FRAMES:
        got = f"{len(frames)} frames" if isinstance(frames, list) else short_repr(frames)
        raise AAError("annotation frames", f"{path}: {got}",
                      f"\"frames\" must be a list of 1 to {MAX_ANNOTATION_FRAMES:,} frames (split longer sequences)")
    caption, source = doc.get("caption", ""), doc.get("source", {})
    if not isinstance(caption, str) or not isinstance(source, dict):
        bad = "caption" if not isinstance(caption, str) else "source"
        raise AAError(f"annotation {bad}", f"{path}: {short_repr(doc[bad])}",
                      "\"caption\" must be a string and \"source\" an object")
    parsed = [_annotation_frame(f, i, path) for i, f in enumerate(frames)]
    kp = np.stack([k for k, _ in parsed])  # (F, 18, 3)
    return Annotations(width, height, fps, kp, [m for _, m in parsed], caption, source)


def resample_poses(seq: PoseSequence, frames: int, fps: float) -> PoseSequence:
    """Resample to `frames` frames at `fps` by time; linear between source frames, last pose held past the end."""
    if frames < 1:
        raise AAError("frames", frames, "ask for at least 1 frame")
    t = np.arange(frames, dtype=np.float64) / fps * seq.fps  # source frame index, (frames,)
    t = np.clip(t, 0, seq.frames - 1)
    i0 = np.floor(t).astype(int)
    i1 = np.minimum(i0 + 1, seq.frames - 1)
    w = (t - i0)[:, None, None].astype(np.float32)
    a, b = seq.keypoints[i0], seq.keypoints[i1]  # (frames, 18, 3)
    both = (a[..., 2:] > 0) & (b[..., 2:] > 0)
    xy = np.where(both, a[..., :2] * (1 - w) + b[..., :2] * w, np.where(w < 0.5, a[..., :2], b[..., :2]))
    conf = np.where(both, np.minimum(a[..., 2:], b[..., 2:]), np.where(w < 0.5, a[..., 2:], b[..., 2:]))
    return PoseSequence(np.concatenate([xy, conf], -1), seq.width, seq.height, fps)


def fit_poses(seq: PoseSequence, width: int, height: int,
              mode: Literal["frame", "person"] = "person", margin: float = 0.1) -> PoseSequence:
    """Map poses into a width×height frame: `frame` letterboxes the source frame; `person` fits the
    bounding box of all visible keypoints (over the whole sequence) into the frame with a margin."""
    kp = seq.keypoints.copy()
    vis = kp[..., 2] > 0
    if mode == "person" and vis.any():
        xy = kp[..., :2][vis]
        lo, hi = xy.min(0), xy.max(0)
        box = np.maximum(hi - lo, 1.0)
        # head and feet extend beyond the keypoints: pad the box vertically before fitting
        pad = np.array([0.15, 0.12]) * box[1]
        lo, hi = lo - pad, hi + pad
        box = hi - lo
        scale = min(width * (1 - 2 * margin) / box[0], height * (1 - 2 * margin) / box[1])
        center_src = (lo + hi) / 2
    elif mode in ("frame", "person"):
        scale = min(width / seq.width, height / seq.height)
        center_src = np.array([seq.width / 2, seq.height / 2])
    else:
        raise AAError("pose fit mode", mode, "use 'frame' or 'person'")
    center_dst = np.array([width / 2, height / 2])
    kp[..., :2] = (kp[..., :2] - center_src) * scale + center_dst
    kp[~vis] = 0.0
    return PoseSequence(kp, width, height, seq.fps)


def line_width(width: int, height: int) -> int:
    """Skeleton line width: OpenPose's 4 px at 512 px, at least 2 px on tiny frames."""
    return max(2, round(4 * min(width, height) / 512))


def render_skeleton(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """Draw one OpenPose-18 pose (18, 3) on black; returns uint8 (H, W, 3) in [0, 255]."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    lw = line_width(width, height)
    for k, (a, b) in enumerate(LIMBS):
        if keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
            color = tuple(int(c * LIMB_ALPHA) for c in COLORS[k])
            draw.line([tuple(keypoints[a, :2]), tuple(keypoints[b, :2])], fill=color, width=lw)
    r = lw / 2 + 0.5
    for j in range(18):
        if keypoints[j, 2] > 0:
            x, y = keypoints[j, :2]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=COLORS[j])
    return np.asarray(img)


def render_skeletons(seq: PoseSequence) -> np.ndarray:
    """Draw every frame; returns uint8 (F, H, W, 3)."""
    return np.stack([render_skeleton(k, seq.width, seq.height) for k in seq.keypoints])


# Bones used for retargeting: (parent, child) pairs walked from the neck outwards.
BONES = (
    (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)


def bone_lengths(seq: PoseSequence) -> np.ndarray:
    """Median length of each bone over frames where both ends are visible, float32 (17,); NaN if never seen.
    Normalised by the median neck-to-hip distance so that it does not depend on image scale."""
    kp = seq.keypoints
    out = np.full(len(BONES), np.nan, dtype=np.float32)
    for k, (a, b) in enumerate(BONES):
        ok = (kp[:, a, 2] > 0) & (kp[:, b, 2] > 0)
        if ok.any():
            out[k] = np.median(np.linalg.norm(kp[ok, a, :2] - kp[ok, b, :2], axis=-1))
    torso = np.nanmean([out[6], out[9]]) if not np.isnan([out[6], out[9]]).all() else np.nan
    if not torso > 0:
        return np.full(len(BONES), np.nan, dtype=np.float32)
    return out / torso


def retarget(seq: PoseSequence, target: np.ndarray) -> PoseSequence:
    """Give every bone the target's length relative to the driving torso, keeping each bone's direction
    and the neck's position; bones without a target length (NaN) keep their own."""
    target = np.asarray(target, dtype=np.float32)
    if target.shape != (len(BONES),):
        raise AAError("retarget bone lengths", f"shape {target.shape}", f"expected ({len(BONES)},)")
    kp = seq.keypoints.copy()
    src = seq.keypoints
    for f in range(seq.frames):
        torso = [np.linalg.norm(src[f, 1, :2] - src[f, h, :2]) for h in (8, 11)
                 if src[f, 1, 2] > 0 and src[f, h, 2] > 0]
        if not torso:
            continue
        scale = float(np.mean(torso))
        for k, (a, b) in enumerate(BONES):
            if src[f, a, 2] > 0 and src[f, b, 2] > 0 and not math.isnan(target[k]):
                d = src[f, b, :2] - src[f, a, :2]
                n = float(np.linalg.norm(d))
                if n > 1e-6:
                    # torso bones keep the driver's scale; limbs take the target's proportions
                    kp[f, b, :2] = kp[f, a, :2] + d / n * target[k] * scale
    return PoseSequence(kp, seq.width, seq.height, seq.fps)
