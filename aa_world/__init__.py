"""The synthetic world: procedural people, scenes, objects and motions with full ground truth.

Pure numpy + Pillow. Everything is keyed by seeds: `render_clip(spec)` gives identical bytes for the
same `ClipSpec`. Training identities come from `TRAIN_IDENTITY_SEEDS`, evaluation identities from
the disjoint `EVAL_IDENTITY_SEEDS`.
"""
from aa_runtime.motions import MOTIONS, motion_keypoints
from aa_runtime.skeleton import OPENPOSE18, VIEWS

from .captions import (MOTION_VERBS, SCENE_PHRASES, appearance_phrase, class_caption, context_phrase,
                       full_caption, identity_caption)
from .clips import Clip, ClipSpec, FrameTruth, render_clip, sample_clip_spec, sidecar_path, write_clip
from .identity import (ATTRIBUTE_HEAD_SIZES, ATTRIBUTE_VALUES, CLASS_WORDS, COLOUR_RGB, COLOURS,
                       EVAL_IDENTITY_SEEDS, TRAIN_IDENTITY_SEEDS, VIEW_DEPENDENT_ATTRIBUTES, Body, Identity,
                       identity_attribute_labels, identity_split, sample_identity)
from .metrics import (background_leakage, id_accuracy, object_accuracy, pose_iou, scene_accuracy, score_video,
                      temporal_flicker)
from .objects import OBJECTS, ObjectSpec
from .scenes import SCENES, render_scene

__all__ = [
    "ATTRIBUTE_HEAD_SIZES", "ATTRIBUTE_VALUES", "Body", "CLASS_WORDS", "COLOURS", "COLOUR_RGB", "Clip", "ClipSpec",
    "EVAL_IDENTITY_SEEDS", "FrameTruth", "Identity", "MOTIONS", "MOTION_VERBS", "OBJECTS", "OPENPOSE18",
    "ObjectSpec", "SCENES", "SCENE_PHRASES", "TRAIN_IDENTITY_SEEDS", "VIEWS", "VIEW_DEPENDENT_ATTRIBUTES",
    "appearance_phrase", "class_caption", "context_phrase", "full_caption", "identity_attribute_labels",
    "identity_caption", "identity_split", "motion_keypoints", "render_clip", "render_scene", "sample_clip_spec",
    "sample_identity", "sidecar_path", "write_clip",
    "Judge", "JudgeConfig", "JudgeOutput", "background_leakage", "id_accuracy", "object_accuracy", "pose_iou",
    "scene_accuracy", "score_video", "temporal_flicker",
]

_JUDGE_EXPORTS = ("Judge", "JudgeConfig", "JudgeOutput")  # imported on first use: they need torch


def __getattr__(name):
    if name in _JUDGE_EXPORTS:
        from . import judge

        return getattr(judge, name)
    raise AttributeError(f"module 'aa_world' has no attribute {name!r}")
