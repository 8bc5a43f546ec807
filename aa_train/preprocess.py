"""Identity preprocessing: reference video → cropped frames, OpenPose-18 keypoints, person
masks and captions, cached on disk by video hash + settings.

    data = prepare_identity(PrepareConfig(video="ref.mp4", token="<me>", class_word="man"))
    write_preview(data, "me.annotations.png")

Stages: decode and resample → poses → masks → drop frames without a person → one square crop for the
whole clip (union box of masks and keypoints, 15 % margin, edge-padded) → captions → cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_dir, atomic_path, cache_root
from aa_runtime.poses import PoseSequence, bone_lengths, load_annotations, render_skeleton, sidecar_path
from aa_runtime.video import read_video

from . import annotators
from .captioners import (CAPTIONERS, DEFAULT_OPENAI_MODEL, DEFAULT_TIMEOUT_S, CaptionResult, described_appearance,
                         judge_appearance, openai_captions, template_captions, world_appearance, world_context)

CACHE_FORMAT = "aa-identity/2"  # 2: source["appearance"]
DEFAULT_MAX_FPS = 8.0
CROP_MARGIN = 0.15  # of the union box's longer side, on every side
MIN_FRAMES = 2
MAX_CAPTION_IMAGE_SIDE = 512


@dataclass
class ReadSettings:
    """How a reference video is read: which frames, which annotators, which captioner (`aa-train identity`'s
    reading flags; the identity trainer holds one as `IdentityTrainConfig.read`)."""

    max_frames: int = 32
    fps: float | None = None  # resample rate; None = the video's, capped at 8
    pose_backend: annotators.PoseBackend = "auto"  # auto = sidecar when VIDEO.aa.json exists, else mediapipe
    mask_backend: annotators.MaskBackend = "auto"  # auto = sidecar masks when the sidecar has them, else mediapipe
    captioner: str = "template"
    description: str | None = None  # appended to the template caption
    sam_checkpoint: Path | None = None
    dwpose_det: Path | None = None  # yolox_l.onnx
    dwpose_pose: Path | None = None  # dw-ll_ucoco_384.onnx
    openai_model: str = DEFAULT_OPENAI_MODEL
    openai_timeout: float = DEFAULT_TIMEOUT_S
    min_person_fraction: float = 0.5  # frames that must show a person

    def __post_init__(self):
        if not (isinstance(self.max_frames, int) and MIN_FRAMES <= self.max_frames <= 1024):
            raise AAError("max_frames", self.max_frames, f"use {MIN_FRAMES} to 1024")
        if self.fps is not None and not (0 < self.fps <= 120):
            raise AAError("fps", self.fps, "use a rate in (0, 120] or leave it unset for the video's (≤ 8)")
        if self.pose_backend not in annotators.POSE_BACKENDS:
            raise AAError("pose_backend", repr(self.pose_backend), f"use one of {', '.join(annotators.POSE_BACKENDS)}")
        if self.mask_backend not in annotators.MASK_BACKENDS:
            raise AAError("mask_backend", repr(self.mask_backend), f"use one of {', '.join(annotators.MASK_BACKENDS)}")
        if self.captioner not in CAPTIONERS:
            raise AAError("captioner", repr(self.captioner), f"use one of {', '.join(CAPTIONERS)}")
        if not 0 < self.min_person_fraction <= 1:
            raise AAError("min_person_fraction", self.min_person_fraction, "use a fraction in (0, 1]")
        if not self.openai_timeout > 0:
            raise AAError("openai_timeout", self.openai_timeout, "use a positive number of seconds")
        if self.pose_backend == "dwpose":
            annotators.check_dwpose_paths(self.dwpose_det, self.dwpose_pose)
        if self.mask_backend == "sam":
            self.sam_checkpoint = annotators.check_sam_checkpoint(self.sam_checkpoint)


READ_SETTINGS = tuple(f.name for f in dataclasses.fields(ReadSettings))


@dataclass
class PrepareConfig:
    """Everything that decides the identity dataset of one reference video."""

    video: Path
    token: str = "<me>"
    class_word: str = "person"
    resolution: int = 64  # square crop side in pixels
    read: ReadSettings = field(default_factory=ReadSettings)
    cache_dir: Path = field(default_factory=lambda: cache_root("identity"))
    use_cache: bool = True

    def __post_init__(self):
        self.video = Path(self.video)
        if not self.video.exists():
            raise AAError("video", f"{self.video} does not exist", "check the path")
        if not self.token or any(c.isspace() for c in self.token):
            raise AAError("token", repr(self.token), "use one word without spaces, e.g. '<me>'")
        if not self.class_word or self.class_word != self.class_word.strip() or "\n" in self.class_word \
                or self.token in self.class_word:
            raise AAError("class_word", repr(self.class_word), "use a plain class word such as 'man' or 'woman'")
        if not (isinstance(self.resolution, int) and 16 <= self.resolution <= 2048 and self.resolution % 8 == 0):
            raise AAError("resolution", self.resolution, "use a multiple of 8 between 16 and 2048")
        needs_sidecar = "sidecar" in (self.read.pose_backend, self.read.mask_backend)
        if needs_sidecar and not sidecar_path(self.video).is_file():
            raise AAError("sidecar", f"{sidecar_path(self.video)} does not exist",
                          "write the annotations beside the video (format aa-annotations/1) or use 'auto'")
        self.cache_dir = Path(self.cache_dir).expanduser()

    def resolved_backends(self) -> tuple[str, str]:
        """(pose, mask) backends with `auto` decided by the files beside the video."""
        side = sidecar_path(self.video)
        pose = self.read.pose_backend
        if pose == "auto":
            pose = "sidecar" if side.is_file() else "mediapipe"
        mask = self.read.mask_backend
        if mask == "auto":
            mask = "sidecar" if side.is_file() and annotators.sidecar_has_masks(side) else "mediapipe"
        return pose, mask


@dataclass
class IdentityData:
    """The prepared reference: frames uint8 (F, R, R, 3) in [0, 255], keypoints float32 (F, 18, 3) in crop pixels
    (conf 0 = missing), masks bool (F, R, R), the two captions, fps, bone lengths (17,) and provenance."""

    frames: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray
    caption: str
    class_caption: str
    fps: float
    bone_lengths: np.ndarray
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        f = self.frames
        if f.ndim != 4 or f.dtype != np.uint8 or f.shape[1] != f.shape[2] or f.shape[3] != 3:
            raise AAError("identity frames", f"{f.dtype} {f.shape}", "expected uint8 (F, R, R, 3)")
        if self.keypoints.shape != (len(f), 18, 3) or self.masks.shape != f.shape[:3] or self.masks.dtype != bool:
            raise AAError("identity annotations", f"keypoints {self.keypoints.shape}, masks {self.masks.dtype} "
                          f"{self.masks.shape}", f"expected ({len(f)}, 18, 3) and bool {f.shape[:3]}")

    @property
    def resolution(self) -> int:
        return int(self.frames.shape[1])

    def save(self, folder: str | Path) -> Path:
        """Write `data.npz` + `identity.json` into a new folder, atomically (temp folder + rename)."""
        folder = Path(folder)
        try:
            with atomic_dir(folder) as tmp:
                np.savez_compressed(tmp / "data.npz", frames=self.frames, keypoints=self.keypoints,
                                    masks=self.masks, bone_lengths=self.bone_lengths)
                meta = {"format": CACHE_FORMAT, "caption": self.caption, "class_caption": self.class_caption,
                        "fps": self.fps, "source": self.source}
                (tmp / "identity.json").write_text(json.dumps(meta, indent=1))
        except OSError:
            if not folder.is_dir():  # a concurrent writer that won the rename is fine
                raise
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> IdentityData:
        """Read a folder written by `save`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "identity.json").read_text())
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            with np.load(folder / "data.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("frames", "keypoints", "masks", "bone_lengths")}
        except (OSError, ValueError, KeyError) as e:
            raise AAError("identity cache", f"{folder} is unreadable ({type(e).__name__}: {e})",
                          "delete the folder to rebuild it") from None
        return cls(caption=meta["caption"], class_caption=meta["class_caption"], fps=float(meta["fps"]),
                   source=meta["source"], **arrays)


# ================================================================================================= stages
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, or of a frame folder's sorted (name, bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def resample_indices(n_frames: int, src_fps: float, fps: float, max_frames: int) -> np.ndarray:
    """Source frame index of each output frame at `fps` (nearest earlier frame), at most `max_frames`."""
    count = min(max_frames, int(math.floor((n_frames - 1) * fps / src_fps + 1e-6)) + 1)
    idx = np.floor(np.arange(count) * src_fps / fps + 1e-6).astype(int)
    return idx[idx < n_frames]


def read_resampled(path: Path, fps: float, max_frames: int, default_fps: float = DEFAULT_MAX_FPS):
    """Decode only what `max_frames` output frames at `fps` (never above the video's own rate; `default_fps` when
    the file names none) need → (the decoded VideoClip, the source index of each output frame, the rate used,
    the video's rate)."""
    probe = read_video(path, max_frames=1)
    src_fps = float(probe.fps) if probe.fps and probe.fps > 0 else default_fps
    fps = min(fps, src_fps)
    clip = read_video(path, max_frames=int(math.ceil((max_frames - 1) * src_fps / fps)) + 1)
    return clip, resample_indices(len(clip.frames), src_fps, fps, max_frames), fps, src_fps


def decode(cfg: PrepareConfig) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Decode + resample → frames uint8 (F, H, W, 3), their source indices (F,), fps, the video's fps."""
    clip, idx, fps, src_fps = read_resampled(cfg.video, DEFAULT_MAX_FPS if cfg.read.fps is None else cfg.read.fps,
                                             cfg.read.max_frames)
    if len(idx) < MIN_FRAMES:
        raise AAError("video", f"{cfg.video.name} gives {len(idx)} frame(s) at {fps:g} fps "
                      f"({len(clip.frames)} decoded)", f"give a video with at least {MIN_FRAMES} frames")
    return clip.frames[idx], idx, fps, src_fps


def drop_outside(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """Mark keypoints outside the frame missing (conf 0): backends guess joints past the border (a foot below
    the picture) that the frame does not show."""
    x, y = keypoints[..., 0], keypoints[..., 1]
    out = (x < 0) | (y < 0) | (x > width) | (y > height)
    return np.where(out[..., None], 0.0, keypoints).astype(np.float32)


def square_crop_box(masks: np.ndarray, keypoints: np.ndarray, width: int, height: int,
                    margin: float = CROP_MARGIN) -> tuple[int, int, int]:
    """(x0, y0, side) of one square for the whole clip: the union box of masks (F, H, W) and visible
    keypoints (F, 18, 3), grown by `margin` × its longer side on every side, moved inside the frame when
    it fits (the rest is padded later)."""
    xs, ys = [], []
    if masks.any():
        any_y, any_x = masks.any((0, 2)), masks.any((0, 1))  # (H,), (W,)
        ys += [np.argmax(any_y), height - np.argmax(any_y[::-1])]
        xs += [np.argmax(any_x), width - np.argmax(any_x[::-1])]
    vis = keypoints[..., 2] > 0
    if vis.any():
        xy = keypoints[..., :2][vis]
        xs += [xy[:, 0].min(), xy[:, 0].max() + 1]
        ys += [xy[:, 1].min(), xy[:, 1].max() + 1]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = max(int(math.ceil(side)), 8)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx, by = int(round(cx - side / 2)), int(round(cy - side / 2))
    # slide inside the frame along each axis where the frame is large enough
    bx = min(max(bx, 0), width - side) if side <= width else bx
    by = min(max(by, 0), height - side) if side <= height else by
    return bx, by, side


def _crop(img: np.ndarray, box: tuple[int, int, int], mode: str) -> np.ndarray:
    """Cut the square (x0, y0, side) out of (H, W, ...) with padding ('edge' for pixels, 'constant' for masks)."""
    x0, y0, side = box
    h, w = img.shape[:2]
    pad = [(max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w))] + [(0, 0)] * (img.ndim - 2)
    if any(p != (0, 0) for p in pad):
        img = np.pad(img, pad, mode=mode)
    y, x = y0 + pad[0][0], x0 + pad[1][0]
    return img[y:y + side, x:x + side]


def crop_clip(frames: np.ndarray, keypoints: np.ndarray, masks: np.ndarray, box: tuple[int, int, int],
              resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one crop box to the clip and resize to R: frames uint8 (F, R, R, 3), keypoints (F, 18, 3) mapped
    exactly by x' = (x − x0) · R / side (pixel-corner convention, as PIL resizes), masks bool (F, R, R)."""
    x0, y0, side = box
    s = resolution / side
    out_f = np.stack([np.asarray(Image.fromarray(_crop(f, box, "edge")).resize(
        (resolution, resolution), Image.Resampling.BICUBIC)) for f in frames])
    out_m = np.stack([np.asarray(Image.fromarray(_crop(m, box, "constant").astype(np.float32)).resize(
        (resolution, resolution), Image.Resampling.BILINEAR)) >= 0.5 for m in masks])
    kp = keypoints.astype(np.float32).copy()
    kp[..., 0] = (kp[..., 0] - x0) * s
    kp[..., 1] = (kp[..., 1] - y0) * s
    kp[kp[..., 2] <= 0] = 0.0
    return out_f, kp, out_m


def _sidecar_masks_sha(side: Path) -> str:
    """sha256 over the mask PNGs a sidecar names (name and bytes, in frame order); a missing one hashes as absent
    (reading it later gives the clear error)."""
    h = hashlib.sha256()
    for rel in load_annotations(side).masks:
        h.update(f"{rel}\0".encode())
        if rel is not None and (side.parent / rel).is_file():
            h.update(file_sha256(side.parent / rel).encode())
    return h.hexdigest()


def _settings_key(cfg: PrepareConfig, video_sha: str, pose: str, mask: str) -> str:
    """Hash of everything that changes the result (never the cache dir, the timeout or the API key)."""
    def file_id(p):
        return None if p is None else [str(Path(p).resolve()), Path(p).stat().st_size]

    side = sidecar_path(cfg.video)
    settings = {
        "format": CACHE_FORMAT, "video": video_sha, "token": cfg.token, "class_word": cfg.class_word,
        "resolution": cfg.resolution, "max_frames": cfg.read.max_frames, "fps": cfg.read.fps, "pose": pose, "mask": mask,
        "sidecar": file_sha256(side) if "sidecar" in (pose, mask) else None,
        "sidecar_masks": _sidecar_masks_sha(side) if mask == "sidecar" else None,
        "captioner": cfg.read.captioner, "description": cfg.read.description,
        "min_person_fraction": cfg.read.min_person_fraction,
        "sam": file_id(cfg.read.sam_checkpoint) if mask == "sam" else None,
        "dwpose": [file_id(cfg.read.dwpose_det), file_id(cfg.read.dwpose_pose)] if pose == "dwpose" else None,
        "openai": [cfg.read.openai_model, hashlib.sha256((os.environ.get("OPENAI_BASE_URL") or "").encode()).hexdigest()]
        if cfg.read.captioner == "openai" else None,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _check_dependencies(pose: str, mask: str) -> None:
    """Fail before any work when a chosen backend's package is missing."""
    if "mediapipe" in (pose, mask):
        annotators.require_mediapipe()
    if mask == "sam":
        annotators.require_segment_anything()


def _captions(cfg: PrepareConfig, frames: np.ndarray, context: dict | None) -> CaptionResult:
    fallback = template_captions(cfg.token, cfg.class_word, context, cfg.read.description)
    if cfg.read.captioner in ("template", "judge"):
        return fallback
    return openai_captions(frames, cfg.token, cfg.class_word, fallback, cfg.read.openai_model, cfg.read.openai_timeout)


def _appearance(cfg: PrepareConfig, ann, side: Path, context: dict | None, frames: np.ndarray) -> str | None:
    """The person's written appearance naming '<token> <class>': from --description, else as the world's judge reads
    `frames` (captioner judge), else from a world sidecar's full caption; None when none says it."""
    if cfg.read.description and cfg.read.description.strip():
        return described_appearance(cfg.token, cfg.class_word, cfg.read.description)
    if cfg.read.captioner == "judge":
        return judge_appearance(frames, cfg.token, cfg.class_word)
    if ann is None and side.is_file():
        try:
            ann = load_annotations(side)
        except AAError:
            return None
    return world_appearance(ann.caption if ann is not None else None, context, cfg.token, cfg.class_word)


def _caption_source(result: CaptionResult, cfg: PrepareConfig) -> dict:
    return {"captioner": cfg.read.captioner, "captioner_used": result.captioner, "captioner_fallback": result.fell_back,
            "captioner_warning": result.warning,
            **({"openai_model": cfg.read.openai_model} if cfg.read.captioner == "openai" else {})}


def _caption_images(frames: np.ndarray) -> np.ndarray:
    """Full frames for the captioner (scene context), the longer side at most 512 px: uint8 (F, h, w, 3)."""
    h, w = frames.shape[1:3]
    s = MAX_CAPTION_IMAGE_SIDE / max(h, w)
    if s >= 1:
        return frames
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])


# ============================================================================================ entry point
def prepare_identity(cfg: PrepareConfig) -> IdentityData:
    """Reference video → `IdentityData` (cropped frames, keypoints, masks, captions), from cache when possible."""
    # 1. backends and cache key (inputs first: missing packages fail before any decoding)
    pose_backend, mask_backend = cfg.resolved_backends()
    _check_dependencies(pose_backend, mask_backend)
    video_sha = file_sha256(cfg.video)
    key = _settings_key(cfg, video_sha, pose_backend, mask_backend)
    folder = cfg.cache_dir / f"{video_sha[:16]}-{key[:16]}"
    if cfg.use_cache and (folder / "identity.json").is_file():
        try:
            data = IdentityData.load(folder)
        except AAError:
            data = None  # unreadable cache: rebuild below
        if data is not None and data.source.get("cache_key") == key:
            return _cache_hit(cfg, data, folder)

    # 2. decode + resample
    frames, indices, fps, src_fps = decode(cfg)  # (F, H, W, 3)
    n, h, w = frames.shape[:3]

    # 3. poses (F, 18, 3) and masks (F, H, W) in video pixels
    side = sidecar_path(cfg.video)
    ann = None
    if pose_backend == "sidecar":
        keypoints, masks, ann = annotators.load_sidecar(side, (w, h), indices, with_masks=mask_backend == "sidecar")
    elif pose_backend == "dwpose":
        keypoints = annotators.DWPose(cfg.read.dwpose_det, cfg.read.dwpose_pose)(frames)
    else:
        keypoints = annotators.mediapipe_poses(frames)
    if mask_backend == "sidecar":
        if pose_backend != "sidecar":
            _, masks, ann = annotators.load_sidecar(side, (w, h), indices, with_masks=True)
    elif mask_backend == "sam":
        masks = annotators.SamMasks(cfg.read.sam_checkpoint)(frames, keypoints)
    else:
        masks = annotators.mediapipe_masks(frames, keypoints)

    keypoints = drop_outside(keypoints, w, h)

    # 4. frames with a person: enough visible joints
    present = annotators.count_joints(keypoints) >= annotators.MIN_JOINTS  # (F,)
    missing = int(n - present.sum())
    if present.sum() < max(MIN_FRAMES, math.ceil(cfg.read.min_person_fraction * n - 1e-9)):
        raise AAError("video", f"no person found in {missing} of {n} frames ({100 * missing / n:.0f} %) of "
                      f"{cfg.video.name} ({pose_backend} poses)",
                      f"give a video where one person is visible in at least {cfg.read.min_person_fraction:.0%} "
                      f"of the frames (and at least {MIN_FRAMES}), or lower min_person_fraction")
    frames_p, keypoints, masks, indices = frames[present], keypoints[present], masks[present], indices[present]

    # 5. one square crop for the whole clip
    box = square_crop_box(masks, keypoints, w, h)
    out_frames, out_kp, out_masks = crop_clip(frames_p, keypoints, masks, box, cfg.resolution)

    # 6. captions (full frames: the captioner needs the scene)
    context = world_context(ann.source) if ann is not None else None
    if context is None and sidecar_path(cfg.video).is_file():
        try:
            context = world_context(load_annotations(side).source)
        except AAError:
            context = None
    captions = _captions(cfg, _caption_images(frames_p), context)

    source = {
        "video": str(cfg.video), "video_sha256": video_sha, "original_size": [w, h], "video_fps": src_fps,
        "fps": fps, "frame_indices": [int(i) for i in indices], "frames_dropped": missing,
        "pose_backend": pose_backend, "mask_backend": mask_backend, "crop_box": list(box),
        "appearance": _appearance(cfg, ann, side, context, frames_p),
        "crop_margin": CROP_MARGIN, "resolution": cfg.resolution, "world_context": context,
        **_caption_source(captions, cfg), "cache_key": key, "cache_hit": False,
    }
    data = IdentityData(
        frames=out_frames, keypoints=out_kp, masks=out_masks, caption=captions.caption,
        class_caption=captions.class_caption, fps=float(fps),
        bone_lengths=bone_lengths(PoseSequence(out_kp, cfg.resolution, cfg.resolution, fps)), source=source)
    if cfg.use_cache:
        data.save(folder)
    return data


def _cache_hit(cfg: PrepareConfig, data: IdentityData, folder: Path) -> IdentityData:
    """A cached result; an openai caption that fell back last time is retried (and the cache updated)."""
    if cfg.read.captioner == "openai" and data.source.get("captioner_fallback"):
        frames, indices, _, _ = decode(cfg)
        keep = np.isin(indices, data.source.get("frame_indices", []))
        images = _caption_images(frames[keep] if keep.any() else frames)
        captions = _captions(cfg, images, data.source.get("world_context"))
        if not captions.fell_back:
            data = dataclasses.replace(data, caption=captions.caption, class_caption=captions.class_caption,
                                       source={**data.source, **_caption_source(captions, cfg)})
            data.save(folder)
    return dataclasses.replace(data, source={**data.source, "cache_hit": True, "cache_dir": str(folder)})


# ================================================================================================ preview
def _tile(frame: np.ndarray, kp: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """One preview tile: mask tinted green, skeleton on top, upscaled to `size` (uint8 (size, size, 3))."""
    s = size / frame.shape[0]
    img = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.NEAREST)).astype(np.float32)
    m = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    img[m] = 0.6 * img[m] + 0.4 * np.array([0, 255, 0], np.float32)
    k = kp.copy()
    k[:, :2] *= s
    skel = render_skeleton(k, size, size)
    drawn = skel.any(-1)
    img[drawn] = skel[drawn]
    return img.astype(np.uint8)


def write_preview(data: IdentityData, path: str | Path, max_frames: int = 8, tile: int = 192) -> Path:
    """PNG grid (4 columns) of up to `max_frames` evenly sampled frames with skeleton and tinted mask (atomic)."""
    path = Path(path)
    n = len(data.frames)
    idx = np.unique(np.round(np.linspace(0, n - 1, min(max_frames, n))).astype(int))
    size = max(tile, data.resolution)
    tiles = [_tile(data.frames[i], data.keypoints[i], data.masks[i], size) for i in idx]
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = np.zeros((rows * size, cols * size, 3), dtype=np.uint8)
    for j, t in enumerate(tiles):
        r, c = divmod(j, cols)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = t
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path
