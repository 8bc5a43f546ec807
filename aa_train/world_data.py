"""Training data from the synthetic world: `world:N` = N rendered clips, cached once as uint8 arrays."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path
from aa_runtime.poses import render_skeleton

CACHE_FORMAT = "v2"  # v2: part labels and caption spans


@dataclass(frozen=True)
class WorldSource:
    """`world:N[:seed]`: N training clips of `frames` frames at `size` px, from the training identity range."""

    clips: int
    size: int = 64
    frames: int = 8
    fps: float = 8.0
    seed: int = 0
    split: str = "train"

    @classmethod
    def parse(cls, spec: str, size: int, frames: int, fps: float) -> "WorldSource":
        parts = spec.split(":")
        if parts[0] != "world" or len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise AAError("data", spec, "use world:N or world:N:SEED (N clips of the synthetic world)")
        src = cls(int(parts[1]), size, frames, fps, int(parts[2]) if len(parts) == 3 else 0)
        if src.clips < 1:
            raise AAError("data", spec, "ask for at least one clip")
        return src

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class WorldClips:
    """Rendered clips: frames uint8 (N, F, H, W, 3), skeletons uint8 (N, F, H, W, 3), masks bool (N, F, H, W),
    captions (N,), part labels uint8 (N, F, H, W) (aa_world.parts) and each caption's region spans
    ((start, end, region) character spans, `aa_world.captions.full_caption_spans`)."""

    frames: np.ndarray
    skeletons: np.ndarray
    masks: np.ndarray
    captions: list[str]
    parts: np.ndarray
    spans: list[list[tuple[int, int, str]]]


def render_world(src: WorldSource, cache_dir: Path, log=print) -> WorldClips:
    """Render (or load from cache) the clips of `src`; deterministic from its seed."""
    from aa_world.clips import render_clip, sample_clip_spec

    cache = Path(cache_dir) / f"world-{src.clips}-{src.size}px-{src.frames}f-{src.key}-{CACHE_FORMAT}.npz"
    if cache.is_file():
        z = np.load(cache)
        spans = [[tuple(s) for s in row] for row in json.loads(str(z["spans"]))]
        return WorldClips(z["frames"], z["skeletons"], z["masks"], json.loads(str(z["captions"])), z["parts"], spans)
    rng = np.random.default_rng(src.seed)
    n, f, s = src.clips, src.frames, src.size
    frames = np.zeros((n, f, s, s, 3), np.uint8)
    skeletons = np.zeros_like(frames)
    masks = np.zeros((n, f, s, s), bool)
    parts = np.zeros((n, f, s, s), np.uint8)
    captions, spans = [], []
    for i in range(n):
        clip = render_clip(sample_clip_spec(rng, split=src.split, frames=f, fps=src.fps, size=s))
        frames[i], masks[i], parts[i] = clip.frames, clip.masks, clip.parts
        skeletons[i] = np.stack([render_skeleton(k, s, s) for k in clip.keypoints])
        captions.append(clip.caption)
        spans.append([tuple(s) for s in clip.caption_spans])
        if (i + 1) % 1000 == 0:
            log(f"rendered {i + 1}/{n} clips")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, frames=frames, skeletons=skeletons, masks=masks, captions=json.dumps(captions), parts=parts,
                     spans=json.dumps(spans))
    return WorldClips(frames, skeletons, masks, captions, parts, spans)
