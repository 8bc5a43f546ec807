"""Tests of the synthetic world (`aa_world`): determinism, ground truth consistency, views, scenes, captions."""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
from PIL import Image

from aa_world import (ATTRIBUTE_HEAD_SIZES, ATTRIBUTE_VALUES, COLOUR_RGB, EVAL_IDENTITY_SEEDS, MOTIONS, SCENES,
                      TRAIN_IDENTITY_SEEDS, ClipSpec, ObjectSpec, full_caption, identity_attribute_labels,
                      identity_caption, identity_split, motion_keypoints, render_clip, render_scene,
                      sample_clip_spec, sample_identity, write_clip)
from aa_world.captions import MOTION_VERBS, SCENE_PHRASES
from aa_world.identity import HAIR_RGB, NONE, SKIN_RGB
from aa_world.render import EYE_RGB


def _spec(**kw) -> ClipSpec:
    base = dict(identity_seed=7, scene="park", scene_seed=3, motion="walk", objects=(), frames=16, fps=8.0,
                width=64, height=64, seed=1)
    base.update(kw)
    return ClipSpec(**base)


def _dilate(masks: np.ndarray) -> np.ndarray:
    """1-pixel (3×3) dilation of bool (F, H, W) masks."""
    d = masks.copy()
    d[:, 1:] |= masks[:, :-1]
    d[:, :-1] |= masks[:, 1:]
    out = d.copy()
    out[:, :, 1:] |= d[:, :, :-1]
    out[:, :, :-1] |= d[:, :, 1:]
    return out


def _identity_with(predicate, start: int = 0):
    """The first identity (seed ≥ start) satisfying predicate."""
    for seed in range(start, start + 5000):
        ident = sample_identity(seed)
        if predicate(ident):
            return ident
    raise AssertionError("no identity found")


# --- identities ---------------------------------------------------------------------------------


def test_identity_is_a_function_of_its_seed_and_varies():
    assert sample_identity(123) == sample_identity(123)
    idents = [sample_identity(s) for s in range(300)]
    assert len({tuple(i.attributes.values()) for i in idents}) > 290  # (almost) all distinct
    for name, values in ATTRIBUTE_VALUES.items():
        seen = {getattr(i, name) for i in idents}
        assert len(seen) >= min(len(values) - 1, 3), (name, seen)  # every head gets several classes
    labels = identity_attribute_labels(idents[0])
    assert set(labels) == set(ATTRIBUTE_HEAD_SIZES)
    assert all(0 <= labels[k] < ATTRIBUTE_HEAD_SIZES[k] for k in labels)
    assert ATTRIBUTE_VALUES["shirt_colour"][labels["shirt_colour"]] == idents[0].shirt_colour


def test_train_and_eval_identity_seeds_are_disjoint():
    assert TRAIN_IDENTITY_SEEDS.stop <= EVAL_IDENTITY_SEEDS.start
    assert len(set(TRAIN_IDENTITY_SEEDS[-10:]) & set(EVAL_IDENTITY_SEEDS[:10])) == 0
    assert identity_split(0) == "train" and identity_split(1_000_000) == "eval"
    with pytest.raises(ValueError, match="outside"):
        identity_split(EVAL_IDENTITY_SEEDS.stop)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert sample_clip_spec(rng, "eval").identity_seed in EVAL_IDENTITY_SEEDS
        assert sample_clip_spec(rng, "train").identity_seed in TRAIN_IDENTITY_SEEDS
    with pytest.raises(ValueError, match="non-negative integer"):
        sample_identity(-1)


# --- clips: determinism and ground truth --------------------------------------------------------------


def test_same_spec_gives_identical_bytes_and_different_identities_differ():
    spec = _spec(objects=(("balloon", "yellow"), ("dog", "brown")))
    a, b = render_clip(spec), render_clip(spec)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (16, 64, 64, 3)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.keypoints.tobytes() == b.keypoints.tobytes()
    assert np.array_equal(a.masks, b.masks) and a.caption == b.caption
    other = render_clip(_spec(identity_seed=8, objects=spec.objects))
    person = a.masks | other.masks
    diff = np.abs(a.frames.astype(int) - other.frames.astype(int)).sum(-1)[person]
    assert diff.mean() > 40  # the person looks different (same scene, motion and seed)


def test_objects_are_drawn_but_not_part_of_the_person_mask():
    with_objects = render_clip(_spec(objects=(("umbrella", "red"), ("ball", "blue"))))
    without = render_clip(_spec())
    assert np.array_equal(with_objects.masks, without.masks)
    changed = np.abs(with_objects.frames.astype(int) - without.frames.astype(int)).sum(-1) > 30  # (F, H, W)
    assert changed[~without.masks].sum() > 16 * 40  # object pixels outside the person
    assert with_objects.masks.mean() > 0.04  # the person covers a sensible share of the frame


@pytest.mark.parametrize("size", [64, 128])
def test_visible_keypoints_lie_inside_the_person_mask_for_every_motion(size):
    checked = 0
    for motion in MOTIONS:
        for ident in (3, 40, 1_000_001):
            clip = render_clip(_spec(identity_seed=ident, motion=motion, width=size, height=size, seed=ident % 7))
            mask = _dilate(clip.masks)
            f, j = np.nonzero(clip.keypoints[..., 2] > 0)
            x = np.rint(clip.keypoints[f, j, 0]).astype(int)
            y = np.rint(clip.keypoints[f, j, 1]).astype(int)
            assert mask[f, y, x].all(), (motion, ident, list(zip(f[~mask[f, y, x]], j[~mask[f, y, x]])))
            checked += f.size
    assert checked > 0.85 * len(MOTIONS) * 3 * 16 * 18


def test_back_views_hide_nose_and_eyes():
    clip = render_clip(_spec(motion="turn", identity_seed=5))
    views = np.array(clip.views)
    kp = clip.keypoints
    assert (kp[views == "back"][:, [0, 14, 15], 2] == 0).all()
    assert (kp[views == "front"][:, :, 2] == 1).all()
    assert (kp[views == "side"][:, 14:16, 2].sum(-1) == 1).all()  # one eye visible from the side


def _colour_pixels(clip, colour: str, tol: float = 28.0) -> np.ndarray:
    """Per frame, the number of person pixels within `tol` of a palette colour."""
    rgb = np.asarray(COLOUR_RGB[colour], float)
    close = np.linalg.norm(clip.frames.astype(float) - rgb, axis=-1) < tol  # (F, H, W)
    return (close & clip.masks).sum(axis=(1, 2))


def _distinct(ident, colour: str) -> bool:
    """`colour` is far from every other colour this identity wears."""
    others = [COLOUR_RGB[c] for c in (ident.shirt_colour, ident.shirt_colour2, ident.lower_colour, ident.shoe_colour,
                                      ident.hat) if c != NONE and c != colour]
    others += [SKIN_RGB[ident.skin], EYE_RGB] + ([HAIR_RGB[ident.hair_colour]] if ident.hair_colour != NONE else [])
    target = np.asarray(COLOUR_RGB[colour], float)
    return all(np.linalg.norm(target - np.asarray(o, float)) > 90 for o in others)


@pytest.mark.parametrize("size", [64, 128])
def test_logo_pixels_only_in_front_views_and_backpack_pixels_only_in_back_views(size):
    for ident in (_identity_with(lambda i: i.logo_shape == shape and i.backpack != NONE, start=50 * k)
                  for k, shape in enumerate(("circle", "square", "triangle"))):
        for motion in ("turn", "dance"):
            spec = _spec(identity_seed=ident.seed, motion=motion, width=size, height=size, seed=ident.seed % 5)
            clip = render_clip(spec)
            views = np.array(clip.views)
            assert (clip.logo_visible == (views == "front")).all()
            assert (clip.backpack_visible == (views == "back")).all()
            # the pixels a feature changes = the frame minus the same frame rendered without it
            no_logo = render_clip(spec, dataclasses.replace(ident, logo_shape=NONE, logo_colour=NONE))
            no_pack = render_clip(spec, dataclasses.replace(ident, backpack=NONE))
            logo = (clip.frames != no_logo.frames).any(-1).sum(axis=(1, 2))  # (F,)
            pack = (clip.frames != no_pack.frames).any(-1).sum(axis=(1, 2))
            area = (size / 64) ** 2
            assert (logo[clip.logo_visible] >= 5 * area).all() and (logo[~clip.logo_visible] == 0).all(), logo
            assert (pack[clip.backpack_visible] >= 20 * area).all() and (pack[~clip.backpack_visible] == 0).all()
            assert np.array_equal(no_pack.masks[~clip.backpack_visible], clip.masks[~clip.backpack_visible])


def test_logo_and_backpack_colours_follow_the_view():
    ident = _identity_with(lambda i: i.logo_shape != NONE and i.backpack != NONE and i.logo_colour != i.backpack
                           and _distinct(i, i.logo_colour) and _distinct(i, i.backpack))
    clip = render_clip(_spec(identity_seed=ident.seed, motion="turn", scene="indoor room", width=128, height=128))
    logo, pack = _colour_pixels(clip, ident.logo_colour), _colour_pixels(clip, ident.backpack)
    assert (logo[clip.logo_visible] >= 4).all() and (logo[~clip.logo_visible] == 0).all(), logo
    assert (pack[clip.backpack_visible] >= 30).all() and (pack[~clip.backpack_visible] == 0).all(), pack
    plain = _identity_with(lambda i: i.logo_shape == NONE and i.backpack == NONE)
    clip = render_clip(_spec(identity_seed=plain.seed, motion="turn"))
    assert not clip.logo_visible.any() and not clip.backpack_visible.any()


def test_stripes_survive_at_64_pixels():
    ident = _identity_with(lambda i: i.shirt_pattern == "stripes" and _distinct(i, i.shirt_colour)
                           and _distinct(i, i.shirt_colour2))
    clip = render_clip(_spec(identity_seed=ident.seed, motion="wave", scene="indoor room"))
    front = np.array(clip.views) == "front"
    a, b = _colour_pixels(clip, ident.shirt_colour)[front], _colour_pixels(clip, ident.shirt_colour2)[front]
    assert front.any() and (a >= 10).all() and (b >= 6).all(), (a, b)


@pytest.mark.parametrize("motion", ["dance", "turn"])
@pytest.mark.parametrize("frames", [8, 16, 40])  # 1 s, 2 s, 5 s at 8 fps
def test_turning_motions_show_front_side_and_back(motion, frames):
    for seed in range(6):
        clip = render_clip(_spec(motion=motion, seed=seed, frames=frames))
        assert {"front", "side", "back"} <= set(clip.views), clip.views


def test_walks_cover_all_views_across_seeds():
    views = set()
    for seed in range(12):
        views |= set(render_clip(_spec(motion="walk", seed=seed, frames=4)).views)
    assert views == {"front", "side", "back"}


# --- motions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 512])
def test_motion_keypoints_shape_and_frame(size):
    for motion in MOTIONS:
        kp = motion_keypoints(motion, 24, 8.0, size, size)
        assert kp.shape == (24, 18, 3) and kp.dtype == np.float32
        vis = kp[..., 2] > 0
        assert set(np.unique(kp[..., 2])) <= {0.0, 1.0}
        assert vis.mean() > 0.85, motion
        assert (kp[..., 0][vis] >= 0).all() and (kp[..., 0][vis] <= size - 1).all()
        assert (kp[..., 1][vis] >= 0).all() and (kp[..., 1][vis] <= size - 1).all()
        assert np.ptp(kp[..., 1][vis]) > 0.45 * size  # a full-body figure


def test_motion_keypoints_scale_with_size_and_match_rendered_clips():
    small = motion_keypoints("dance", 16, 8.0, 64, 64, seed=3)
    large = motion_keypoints("dance", 16, 8.0, 512, 512, seed=3)
    vis = (small[..., 2] > 0) & (large[..., 2] > 0)
    assert np.allclose(small[..., :2][vis] * 8, large[..., :2][vis], atol=1e-2)
    spec = _spec(motion="squat", seed=4, identity_seed=99)
    clip = render_clip(spec)
    kp = motion_keypoints("squat", 16, 8.0, 64, 64, body=clip.identity.body, seed=4)
    assert np.array_equal(kp, clip.keypoints)
    assert np.abs(np.diff(kp[..., :2], axis=0)).max() > 0.5  # it moves


def test_motion_inputs_are_checked():
    with pytest.raises(ValueError, match="motion='moonwalk'.*walk"):
        motion_keypoints("moonwalk", 8, 8.0, 64, 64)
    with pytest.raises(ValueError, match="frames=0"):
        motion_keypoints("walk", 0, 8.0, 64, 64)
    with pytest.raises(ValueError, match="width=8"):
        motion_keypoints("walk", 4, 8.0, 8, 64)
    with pytest.raises(ValueError, match="scene='moon'"):
        _spec(scene="moon")
    with pytest.raises(ValueError, match="different kinds"):
        _spec(objects=(("dog", "brown"), ("dog", "white")))


# --- scenes ---------------------------------------------------------------------------------------


def test_scenes_are_distinguishable_by_colour_layout_at_64px():
    def features(img):  # 4×4 grid of mean colours
        return img.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3)).ravel()

    train = {s: np.mean([features(render_scene(s, seed, 64, 64)) for seed in range(4)], axis=0) for s in SCENES}
    correct = 0
    for s in SCENES:
        for seed in range(100, 104):
            f = features(render_scene(s, seed, 64, 64))
            correct += min(train, key=lambda k: np.linalg.norm(train[k] - f)) == s
    assert correct == 4 * len(SCENES)  # nearest-centroid on held-out seeds
    means = np.array([render_scene(s, 0, 64, 64).mean(axis=(0, 1)) for s in SCENES])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[~np.eye(len(SCENES), dtype=bool)].min() > 8
    a, b = render_scene("forest", 0, 64, 64), render_scene("forest", 1, 64, 64)
    assert np.abs(a - b).mean() > 3  # seeds vary a scene


# --- captions -------------------------------------------------------------------------------------


def test_captions_name_the_identity_colours_in_fixed_order():
    for seed in range(40):
        ident = sample_identity(seed)
        text = full_caption(ident, "wave", "beach", [("balloon", "yellow")])
        words = [ident.shirt_colour, ident.lower_colour, ident.shoe_colour, ident.class_word]
        words += [v for v in (ident.hat, ident.logo_colour, ident.backpack, ident.hair_colour, ident.shirt_colour2)
                  if v != NONE]
        assert all(w in text for w in words), (words, text)
        assert text.startswith(f"a {ident.class_word} ") or text.startswith(f"a bald {ident.class_word}")
        assert text.endswith("waving on a beach, holding a yellow balloon")
        assert text.index(ident.shirt_colour) < text.index("waving")
    assert identity_caption("<me>", "man", "wave", "beach", [("balloon", "yellow")]) == \
        "a <me> man waving on a beach, holding a yellow balloon"
    assert identity_caption("<me>", "woman", "dance", "snow field", [ObjectSpec("dog", "brown"),
                                                                     ObjectSpec("umbrella", "red")]) == \
        "a <me> woman dancing in a snow field, holding a red umbrella, with a brown dog"
    assert set(SCENE_PHRASES) == set(SCENES) and set(MOTION_VERBS) == set(MOTIONS)
    clip = render_clip(_spec(objects=(("ball", "green"),)))
    assert clip.caption == full_caption(clip.identity, "walk", "park", [("ball", "green")])


# --- writing --------------------------------------------------------------------------------------

_HAVE_RUNTIME_IO = all(importlib.util.find_spec(m) is not None for m in ("aa_runtime.poses", "aa_runtime.video")) \
    and importlib.util.find_spec("av") is not None


@pytest.mark.skipif(not _HAVE_RUNTIME_IO, reason="aa_runtime.poses / aa_runtime.video (or PyAV) not importable yet")
def test_write_clip_writes_video_masks_and_sidecar(tmp_path):
    from aa_runtime.poses import load_annotations
    from aa_runtime.video import read_video

    clip = render_clip(_spec(frames=6, objects=(("dog", "white"),)))
    out = write_clip(clip, tmp_path / "ref.mp4")
    assert out == tmp_path / "ref.mp4" and out.stat().st_size > 0
    sidecar = tmp_path / "ref.aa.json"
    ann = load_annotations(sidecar)
    assert (ann.width, ann.height, ann.fps) == (64, 64, 8.0)
    assert np.allclose(ann.keypoints, clip.keypoints, atol=1e-3)
    assert ann.caption == clip.caption
    assert ann.masks[0] == "ref.masks/000000.png" and len(ann.masks) == 6
    for i, rel in enumerate(ann.masks):
        mask = np.asarray(Image.open(tmp_path / rel)) > 127
        assert np.array_equal(mask, clip.masks[i])
    src = ann.source
    assert src["spec"]["identity_seed"] == 7 and src["identity"]["attributes"]["shirt_colour"] == \
        clip.identity.shirt_colour
    assert src["views"] == list(clip.views) and src["objects"] == [{"kind": "dog", "colour": "white"}]
    video = read_video(out)
    assert video.frames.shape == clip.frames.shape
    assert np.abs(video.frames.astype(int) - clip.frames.astype(int)).mean() < 8  # lossy H.264
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
