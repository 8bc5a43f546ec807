"""Video IO without a system ffmpeg: PyAV (bundled libx264) for mp4/avi/webm, Pillow for gif and images."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import AAError
from .files import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif"}
# What Pillow raises on a truncated or corrupt image: besides OSError, its parsers index and unpack the bytes as
# they come; DecompressionBombError for a header claiming a gigantic size.
IMAGE_ERRORS = (OSError, EOFError, ValueError, IndexError, struct.error, SyntaxError, Image.DecompressionBombError)


@dataclass
class VideoClip:
    """Decoded frames uint8 (F, H, W, 3) in [0, 255] and their frame rate."""

    frames: np.ndarray
    fps: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def read_video(path: str | Path, max_frames: int | None = None, default_fps: float = 8.0) -> VideoClip:
    """Decode a video file, a gif, or a folder of images (sorted by name, `default_fps`)."""
    path = Path(path)
    if not path.exists():
        raise AAError("video", f"{path} does not exist", "check the path")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
        if not files:
            raise AAError("video folder", f"{path} holds no images",
                          f"put frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
        frames = [read_image(f) for f in files]
        if len({f.shape for f in frames}) != 1:
            raise AAError("video folder", f"{path}: images differ in size", "use frames of one size")
        return VideoClip(np.stack(frames), default_fps)
    if path.suffix.lower() == ".gif":
        return _read_gif(path, max_frames)
    return _read_av(path, max_frames)


def read_image(path: Path) -> np.ndarray:
    """One still image (a frame of a folder, a training image): uint8 (H, W, 3)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except IMAGE_ERRORS as e:
        raise AAError("video frame", f"{path} is not a readable image ({type(e).__name__})",
                      "re-export the frame or remove it from the folder") from None


def _read_gif(path: Path, max_frames: int | None) -> VideoClip:
    try:
        im = Image.open(path)
        frames, durations = [], []
        for i in range(getattr(im, "n_frames", 1)):
            if max_frames is not None and i >= max_frames:
                break
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info.get("duration", 125) or 125)
    except IMAGE_ERRORS as e:
        raise AAError("video", f"{path} is not a readable gif ({type(e).__name__})", "re-export it") from None
    return VideoClip(np.stack(frames), 1000.0 / float(np.median(durations)))


def _read_av(path: Path, max_frames: int | None) -> VideoClip:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AAError("video", f"{path} has no video stream", "give a video file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 8
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise AAError("video", f"{path} cannot be decoded ({type(e).__name__})",
                      "give an mp4/avi/webm/gif file or a folder of images") from None
    if not frames:
        raise AAError("video", f"{path} has no frames", "give a video with at least one frame")
    return VideoClip(np.stack(frames), float(rate))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise AAError("frames to write", f"{frames.dtype} {tuple(frames.shape)}",
                      "expected uint8 (F, H, W, 3) with F ≥ 1")
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (F, H, W, 3) frames atomically: H.264 yuv420p mp4 (or other container) or gif by suffix."""
    path = Path(path)
    frames = _check_frames(frames)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise AAError("output video", path, f"use one of {', '.join(sorted(VIDEO_SUFFIXES))}")
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=round(1000 / fps), loop=0)
        else:
            _write_av(tmp, frames, fps, suffix.lstrip("."))
    return path


def _write_av(path: Path, frames: np.ndarray, fps: float, fmt: str) -> None:
    import av

    # yuv420p needs even sizes: pad odd frames by repeating the last row/column
    f, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    container_fmt = {"mkv": "matroska", "mov": "mov"}.get(fmt, fmt)
    with av.open(str(path), mode="w", format=container_fmt) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree=0: x264's macroblock-tree rate control (its AVX-512 path, as bundled with PyAV) quantises B-frames
        # differently from one encode of the same frames to the next, so a reference video written twice trained
        # two different identities; without it the same frames always give the same bytes (tests/test_video.py)
        stream.options = {"crf": "17", "preset": "medium", "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Concatenate two uint8 (F, H, W, 3) clips of equal size along width → (F, H, 2W, 3)."""
    if left.shape != right.shape:
        raise AAError("preview clips", f"{left.shape} vs {right.shape}", "clips must have the same shape")
    return np.concatenate([left, right], axis=2)


def write_json(path: str | Path, doc: dict) -> Path:
    """Write a JSON document atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str))
    return path
