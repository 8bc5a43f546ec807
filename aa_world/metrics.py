"""Metrics of generated videos: pure functions of a `JudgeOutput` and the renderer's ground truth.

The ground truth is the target clip: the render of the target identity in the target pose (ideally
in the prompt's scene with its objects). Ceiling = these metrics on that render itself; floor = the
base model prompted with the class word only.

    scores = score_video(judge, frames, target_clip, "beach", [("balloon", "yellow")], reference_scene="park")
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .identity import ATTRIBUTE_VALUES, VIEW_DEPENDENT_ATTRIBUTES, Identity, identity_attribute_labels
from .objects import OBJECTS, ObjectSpec
from .scenes import SCENES

if TYPE_CHECKING:
    from .clips import Clip
    from .judge import Judge, JudgeOutput

FLICKER_EPS = 1.0  # grey levels (of 255) added to both sides of the flicker ratio; see temporal_flicker


def _check_scene(scene: str, what: str) -> int:
    if scene not in SCENES:
        raise ValueError(f"{what}={scene!r}: use one of {', '.join(SCENES)}")
    return SCENES.index(scene)


def _flags(flags, n: int, what: str) -> np.ndarray:
    flags = np.asarray(flags)
    if flags.dtype != bool or flags.shape != (n,):
        raise ValueError(f"{what}: got {flags.dtype} {flags.shape}; pass bool ({n},), one flag per judged frame")
    return flags


def attribute_accuracies(judge_out: JudgeOutput, identity: Identity, visible_logo, visible_backpack) -> dict:
    """Attribute name → (hits, counted frames): the judge's argmax vs the identity's label, with the view-dependent
    attributes (logo shape / colour, backpack) counted only in the frames flagged visible."""
    n = len(judge_out)
    counted = {"front": _flags(visible_logo, n, "visible_logo"), "back": _flags(visible_backpack, n, "visible_backpack")}
    labels = identity_attribute_labels(identity)
    out = {}
    for name in ATTRIBUTE_VALUES:
        keep = counted[VIEW_DEPENDENT_ATTRIBUTES[name]] if name in VIEW_DEPENDENT_ATTRIBUTES else np.ones(n, bool)
        hits = judge_out.attributes[name].argmax(-1) == labels[name]  # (F,)
        out[name] = (int(hits[keep].sum()), int(keep.sum()))
    return out


def id_accuracy(judge_out: JudgeOutput, identity: Identity, visible_logo, visible_backpack) -> float:
    """ID accuracy: the share of counted (frame, attribute) pairs where the judge reads the target identity's
    value; view-dependent attributes count only in frames where `visible_logo` / `visible_backpack` (F,) bool
    — from the target clip, never from the generated video — say they can be seen."""
    return pooled_accuracy(attribute_accuracies(judge_out, identity, visible_logo, visible_backpack))


def pooled_accuracy(attributes: dict) -> float:
    """Hits over counted (frame, attribute) pairs of an `attribute_accuracies` result."""
    hits, counted = (sum(v[i] for v in attributes.values()) for i in (0, 1))
    return hits / counted  # counted ≥ F · 11 > 0: the non-view-dependent attributes count in every frame


def scene_accuracy(judge_out: JudgeOutput, scene: str) -> float:
    """Share of frames the judge classifies as `scene` (the prompt's scene)."""
    return float(np.mean(judge_out.scene.argmax(-1) == _check_scene(scene, "scene")))


def _object_kinds(objects) -> set[str]:
    kinds = set()
    for o in objects:
        kind = o.kind if isinstance(o, ObjectSpec) else (o if isinstance(o, str) else o[0])
        if kind not in OBJECTS:
            raise ValueError(f"object {o!r}: use kinds from {', '.join(OBJECTS)} (or ObjectSpec / (kind, colour))")
        kinds.add(kind)
    return kinds


def object_accuracy(judge_out: JudgeOutput, objects: Sequence) -> float:
    """Presence accuracy over every object kind and frame: for each of OBJECTS, is the judge's presence
    (probability > 0.5) the prompt's? A missing prompt object and an extra, unprompted one both count as
    errors. `objects`: ObjectSpec, (kind, colour) pairs or kind names (colours are not judged)."""
    want = np.array([k in _object_kinds(objects) for k in OBJECTS])  # (K,)
    return float(np.mean((judge_out.objects > 0.5) == want[None]))


def pose_iou(judge_out: JudgeOutput, gt_masks: np.ndarray) -> float:
    """Mean over frames of IoU(judge mask > 0.5, ground-truth silhouette of the target identity in the target
    pose); a frame where both are empty counts 1."""
    gt = np.asarray(gt_masks, bool)
    if gt.shape != judge_out.mask.shape:
        raise ValueError(f"gt_masks: shape {gt.shape} ≠ judge mask {judge_out.mask.shape}; judge frames of the "
                         "target clip's size and frame count")
    pred = judge_out.mask > 0.5
    inter = (pred & gt).sum((1, 2))
    union = (pred | gt).sum((1, 2))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def background_leakage(judge_out: JudgeOutput, reference_scene: str, prompt_scene: str) -> float:
    """Share of frames classified as the reference video's scene while the prompt asks for another one."""
    ref = _check_scene(reference_scene, "reference_scene")
    if ref == _check_scene(prompt_scene, "prompt_scene"):
        raise ValueError(f"prompt_scene={prompt_scene!r} is the reference scene: leakage is only defined when the "
                         "prompt asks for another scene")
    return float(np.mean(judge_out.scene.argmax(-1) == ref))


def _dilate(masks: np.ndarray, r: int) -> np.ndarray:
    """(2r+1)² box dilation of bool (F, H, W) masks."""
    out = masks.copy()
    for _ in range(r):
        d = out.copy()
        d[:, 1:] |= out[:, :-1]
        d[:, :-1] |= out[:, 1:]
        out = d.copy()
        out[:, :, 1:] |= d[:, :, :-1]
        out[:, :, :-1] |= d[:, :, 1:]
    return out


def background_change(frames: np.ndarray, person_masks: np.ndarray, dilate: int = 1) -> float:
    """Mean absolute change between consecutive frames outside the person, in grey levels (0–255):
    D = Σ_t Σ_{p ∈ B_t} mean_c |x_{t+1}(p) − x_t(p)| / Σ_t |B_t|, where B_t = pixels outside the person
    (masks dilated by `dilate` px) in both frame t and t+1. 0 when no background pixel is left."""
    x = np.asarray(frames)
    m = np.asarray(person_masks, bool)
    if x.ndim != 4 or m.shape != x.shape[:3] or len(x) < 2:
        raise ValueError(f"frames {x.shape} / person_masks {m.shape}: pass (F, H, W, 3) and (F, H, W) with F ≥ 2")
    m = _dilate(m, dilate) if dilate > 0 else m
    bg = ~(m[1:] | m[:-1])  # (F-1, H, W)
    diff = np.abs(np.diff(x.astype(np.float32), axis=0)).mean(-1)  # (F-1, H, W)
    n = int(bg.sum())
    return float(diff[bg].sum() / n) if n else 0.0


def temporal_flicker(frames: np.ndarray, person_masks: np.ndarray, gt_frames: np.ndarray, gt_masks: np.ndarray,
                     eps: float = FLICKER_EPS) -> float:
    """Temporal flicker relative to ground truth: (D(frames, person_masks) + eps) / (D(gt_frames, gt_masks) + eps),
    with D from `background_change`. 1.0 = as steady as the ground truth, > 1 = flickers more. The world's
    backgrounds are static (only objects and shadows move), so D(gt) can be ≈ 0; `eps` = 1 grey level keeps
    the ratio finite and ignores sub-level changes a viewer cannot see."""
    if not eps > 0:
        raise ValueError(f"eps={eps!r}: use a positive number of grey levels")
    return (background_change(frames, person_masks) + eps) / (background_change(gt_frames, gt_masks) + eps)


def observable_flags(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """(logo, backpack) flags (F,) bool for `id_accuracy` from the target clip: the frames whose view shows the
    chest (front) / the back. For an identity with a logo / backpack these are exactly `clip.logo_visible` /
    `clip.backpack_visible`; for one without, they are the frames that show its absence ('none')."""
    views = np.asarray(clip.views)
    return views == VIEW_DEPENDENT_ATTRIBUTES["logo_shape"], views == VIEW_DEPENDENT_ATTRIBUTES["backpack"]


def score_video(judge: Judge, frames: np.ndarray, target_clip: Clip, prompt_scene: str, prompt_objects: Sequence = (),
                reference_scene: str | None = None) -> dict:
    """All metrics of one generated video. frames uint8 (F, H, W, 3) in [0, 255], of the target clip's frame
    count and size. Returns floats, plus `attributes` (name → [hits, counted frames], what `id_accuracy` pools);
    `background_leakage` is None without a reference scene other than the prompt's.
    Flicker compares the same background pixels in the video and the target clip: those outside the person as
    the judge sees it in the video and as it stands in the target pose (so the target clip scores exactly 1)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape != target_clip.frames.shape:
        raise ValueError(f"frames: got {frames.dtype} {frames.shape}; pass uint8 {target_clip.frames.shape} "
                         "(the target clip's frame count and size)")
    _check_scene(prompt_scene, "prompt_scene")
    out = judge.predict(frames)
    logo, backpack = observable_flags(target_clip)
    person = (out.mask > 0.5) | target_clip.masks  # (F, H, W): the same background pixels on both sides
    leak = None
    if reference_scene is not None and reference_scene != prompt_scene:
        leak = background_leakage(out, reference_scene, prompt_scene)
    attributes = attribute_accuracies(out, target_clip.identity, logo, backpack)
    return {
        "id_accuracy": pooled_accuracy(attributes),
        "scene_accuracy": scene_accuracy(out, prompt_scene),
        "object_accuracy": object_accuracy(out, prompt_objects),
        "pose_iou": pose_iou(out, target_clip.masks),
        "background_leakage": leak,
        "temporal_flicker": temporal_flicker(frames, person, target_clip.frames, person),
        "frames": int(len(frames)),
        "attributes": {k: list(v) for k, v in attributes.items()},  # name → [hits, counted frames]
    }
