"""Clips of the synthetic world: a spec (all seeds) → frames, keypoints, masks and ground truth; writing them.

`render_clip(spec)` is a pure function of the spec: the same spec gives identical bytes. The
written form is the video, one mask PNG per frame under `<stem>.masks/`, and the `<stem>.aa.json`
sidecar whose `source` holds the ground truth the format has no field for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aa_runtime.motions import MAX_SIZE, MIN_SIZE, MOTIONS, check_motion_args, motion_pose
from aa_runtime.skeleton import VIEWS, keypoints18

from .captions import full_caption, full_caption_spans
from .identity import EVAL_IDENTITY_SEEDS, TRAIN_IDENTITY_SEEDS, Identity, check_seed, sample_identity
from .objects import ObjectSpec, check_objects, draw_objects, sample_objects
from .raster import Layers
from .render import draw_figure
from .scenes import SCENES, render_scene

WORLD_FORMAT = "aa-world/1"


# The bundled example person: an evaluation identity turning on a beach (front and back both seen), as `make demo`
# and aa-studio's "bundled example" render it: ClipSpec(**EXAMPLE_REFERENCE)
EXAMPLE_REFERENCE = dict(identity_seed=1_000_007, scene="beach", scene_seed=11, motion="turn", frames=24, fps=8.0,
                         seed=3)


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip; every random choice is keyed by one of these seeds."""

    identity_seed: int
    scene: str
    scene_seed: int
    motion: str
    objects: tuple[ObjectSpec, ...] = ()
    frames: int = 16
    fps: float = 8.0
    width: int = 64
    height: int = 64
    seed: int = 0  # motion variation, placement and object sides

    def __post_init__(self):
        check_seed(self.identity_seed, "identity_seed")
        check_seed(self.scene_seed, "scene_seed")
        check_seed(self.seed, "seed")
        if self.scene not in SCENES:
            raise ValueError(f"scene={self.scene!r}: use one of {', '.join(SCENES)}")
        check_motion_args(self.motion, self.frames, self.fps, self.width, self.height)
        object.__setattr__(self, "objects", check_objects(self.objects))
        object.__setattr__(self, "fps", float(self.fps))

    def to_dict(self) -> dict:
        """JSON-ready form (objects as {kind, colour})."""
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return d


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of one frame."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    keypoints: np.ndarray  # float32 (18, 3)
    mask: np.ndarray  # bool (H, W)
    yaw: float  # radians, 0 = facing the camera
    view: str  # "front" | "side" | "back"
    logo_visible: bool
    backpack_visible: bool
    scene: str
    objects: tuple[ObjectSpec, ...]


@dataclass(frozen=True)
class Clip:
    """A rendered clip with its ground truth."""

    spec: ClipSpec
    identity: Identity
    frames: np.ndarray  # uint8 (F, H, W, 3)
    keypoints: np.ndarray  # float32 (F, 18, 3) OpenPose-18 (x, y, conf) in pixels
    masks: np.ndarray  # bool (F, H, W) the figure (hair, hat, backpack included; objects excluded)
    yaw: np.ndarray  # float32 (F,)
    views: tuple[str, ...]  # per frame
    logo_visible: np.ndarray  # bool (F,)
    backpack_visible: np.ndarray  # bool (F,)
    caption: str = field(default="")
    parts: np.ndarray | None = None  # uint8 (F, H, W) part label per pixel (aa_world.parts.PARTS)
    caption_spans: tuple[tuple[int, int, str], ...] = ()  # (start, end, region) of the caption's region words

    def frame(self, i: int) -> FrameTruth:
        """The ground truth of frame i."""
        return FrameTruth(rgb=self.frames[i], keypoints=self.keypoints[i], mask=self.masks[i],
                          yaw=float(self.yaw[i]), view=self.views[i], logo_visible=bool(self.logo_visible[i]),
                          backpack_visible=bool(self.backpack_visible[i]), scene=self.spec.scene,
                          objects=self.spec.objects)

    def source(self) -> dict:
        """Ground truth for the sidecar's `source` field (JSON-ready)."""
        return {
            "generator": WORLD_FORMAT,
            "spec": self.spec.to_dict(),
            "identity": {"seed": self.identity.seed, "attributes": self.identity.attributes,
                         "body": asdict(self.identity.body)},
            "scene": self.spec.scene,
            "motion": self.spec.motion,
            "objects": [asdict(o) for o in self.spec.objects],
            "views": list(self.views),
            "yaw": [round(float(v), 4) for v in self.yaw],
            "logo_visible": [bool(v) for v in self.logo_visible],
            "backpack_visible": [bool(v) for v in self.backpack_visible],
        }


def render_clip(spec: ClipSpec, identity: Identity | None = None) -> Clip:
    """Render a clip: background once, then objects and the figure in all frames at once.

    `identity` overrides `sample_identity(spec.identity_seed)` (e.g. an edited identity for an ablation).
    """
    identity = sample_identity(spec.identity_seed) if identity is None else identity
    pose, angles = motion_pose(spec.motion, spec.frames, spec.fps, spec.width, spec.height, identity.body, spec.seed)
    layers = Layers(render_scene(spec.scene, spec.scene_seed, spec.width, spec.height), spec.frames)
    t = np.arange(spec.frames) / spec.fps  # (F,) seconds
    ground_side = 1.0 if np.random.default_rng([spec.seed, 3]).random() < 0.5 else -1.0
    draw_objects(layers, pose, spec.objects, angles.hands, t, ground_side)
    info = draw_figure(layers, pose, identity)
    return Clip(
        spec=spec, identity=identity, frames=layers.to_uint8(),
        keypoints=keypoints18(pose, spec.width, spec.height), masks=layers.person > 0.5,
        yaw=pose.yaw.astype(np.float32), views=tuple(VIEWS[v] for v in info.view),
        logo_visible=info.logo_visible, backpack_visible=info.backpack_visible,
        caption=full_caption(identity, spec.motion, spec.scene, spec.objects), parts=layers.labels,
        caption_spans=full_caption_spans(identity, spec.motion, spec.scene, spec.objects),
    )


def sample_clip_spec(rng: np.random.Generator, split: str = "train", frames: int = 16, fps: float = 8.0,
                     size: int | tuple[int, int] = 64) -> ClipSpec:
    """A random clip spec; identities from the split's seed range, everything else from `rng`."""
    seeds = {"train": TRAIN_IDENTITY_SEEDS, "eval": EVAL_IDENTITY_SEEDS}.get(split)
    if seeds is None:
        raise ValueError(f"split={split!r}: use 'train' or 'eval'")
    width, height = (size, size) if isinstance(size, (int, np.integer)) else size
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise ValueError(f"size={size!r}: use sides in [{MIN_SIZE}, {MAX_SIZE}]")
    return ClipSpec(
        identity_seed=int(rng.integers(seeds.start, seeds.stop)),
        scene=SCENES[int(rng.integers(len(SCENES)))],
        scene_seed=int(rng.integers(2**31)),
        motion=MOTIONS[int(rng.integers(len(MOTIONS)))],
        objects=sample_objects(rng),
        frames=int(frames), fps=float(fps), width=int(width), height=int(height),
        seed=int(rng.integers(2**31)),
    )


def sidecar_path(path: Path) -> Path:
    """`ref.mp4` → `ref.aa.json` (the suffix is replaced)."""
    return path.with_name(path.stem + ".aa.json")


def write_clip(clip: Clip, path: str | Path) -> Path:
    """Write the video at `path`, masks as `<stem>.masks/000000.png …` and the `<stem>.aa.json` sidecar."""
    from aa_runtime.files import atomic_dir
    from aa_runtime.poses import Annotations, save_annotations
    from aa_runtime.video import write_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_dir = path.with_name(path.stem + ".masks")
    names = []
    with atomic_dir(mask_dir) as tmp:
        for i, mask in enumerate(clip.masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / f"{i:06d}.png", optimize=False)
            names.append(f"{mask_dir.name}/{i:06d}.png")
    write_video(path, clip.frames, clip.spec.fps)
    ann = Annotations(width=clip.spec.width, height=clip.spec.height, fps=clip.spec.fps,
                      keypoints=clip.keypoints, masks=names, caption=clip.caption, source=clip.source())
    save_annotations(sidecar_path(path), ann)
    return path
