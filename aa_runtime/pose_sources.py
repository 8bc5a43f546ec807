"""Where a driving pose sequence comes from: an `.aa.json`, a video (its sidecar or a pose backend), or a
built-in motion."""
from __future__ import annotations

from pathlib import Path

from .errors import AAError, MissingDependencyError
from .poses import PoseSequence, load_annotations, sidecar_path
from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES


def builtin_motions() -> tuple[str, ...]:
    from .motions import MOTIONS

    return tuple(MOTIONS)


def motion_poses(name: str, frames: int, fps: float, width: int, height: int) -> PoseSequence:
    """A built-in parametric motion rendered as keypoints for a default body."""
    from .motions import MOTIONS, check_motion_args, motion_keypoints

    if name not in MOTIONS:
        raise AAError("motion", repr(name), f"use one of {', '.join(MOTIONS)}")
    try:
        check_motion_args(name, frames, fps, width, height)
    except ValueError as e:  # "frames=-3: use an integer ≥ 1" → the one-line error of the contract
        what, _, fix = str(e).partition(": ")
        arg, _, value = what.partition("=")
        raise AAError(f"motion {arg}", value, fix) from None
    return PoseSequence(motion_keypoints(name, frames, fps, width, height), width, height, fps)


def load_pose_source(path: str | Path, backend: str = "auto") -> PoseSequence:
    """Poses from an `.aa.json`, or from a video: its `VIDEO.aa.json` sidecar, else a pose backend."""
    path = Path(path)
    if not path.exists():
        raise AAError("pose source", f"{path} does not exist", "pass a video, a folder of frames or an .aa.json")
    if path.name.endswith(".json"):
        return load_annotations(path).poses()
    if not (path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES):
        raise AAError("pose source", path, "use a video (mp4/avi/gif/...), a folder of frames, or an .aa.json")
    side = sidecar_path(path)
    if backend in ("auto", "sidecar") and side.is_file():
        return load_annotations(side).poses()
    if backend == "sidecar":
        raise AAError("pose sidecar", f"{side} is missing", "write it, or use --pose-backend mediapipe")
    return extract_poses(path, backend="mediapipe" if backend == "auto" else backend)


def extract_poses(path: Path, backend: str) -> PoseSequence:
    """Run a pose backend over a video's frames."""
    from .annotate import detect_poses
    from .video import read_video

    clip = read_video(path)
    try:
        kp = detect_poses(clip.frames, backend=backend)
    except ImportError as e:
        raise MissingDependencyError(e.name or backend, "real", f"pose backend '{backend}'") from None
    if (kp[..., 2].max(axis=1) == 0).all():
        raise AAError("pose source", f"{path}: no person found in any of {len(kp)} frames",
                      "use footage where one person is fully visible")
    return PoseSequence(kp, clip.size[0], clip.size[1], clip.fps)
