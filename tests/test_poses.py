"""Pose format, resampling, fitting, skeleton rendering, retargeting."""
import json

import numpy as np
import pytest

from aa_runtime.errors import AAError
from aa_runtime.poses import (COLORS, LIMB_ALPHA, LIMBS, Annotations, PoseSequence, bone_lengths, fit_poses,
                              load_annotations, render_skeleton, resample_poses, retarget, save_annotations)
from conftest import stick_figure


def test_annotations_round_trip(tmp_path):
    kp = stick_figure(3)
    kp[1, 4] = 0  # a missing wrist
    ann = Annotations(64, 64, 12.0, kp, ["masks/000000.png", None, "masks/000002.png"], "a man", {"seed": 3})
    path = save_annotations(tmp_path / "clip.aa.json", ann)
    doc = json.loads(path.read_text())
    assert doc["format"] == "aa-annotations/1" and doc["keypoints"] == "openpose18"
    back = load_annotations(path)
    np.testing.assert_allclose(back.keypoints, kp, atol=1e-3)
    assert back.masks == ann.masks and back.caption == "a man" and back.source == {"seed": 3}
    assert (back.width, back.height, back.fps) == (64, 64, 12.0)


@pytest.mark.parametrize("doc, expected", [
    ({"format": "other"}, "annotation file format"),
    ({"format": "aa-annotations/1", "width": 8, "height": 8, "fps": 8, "frames": [{"pose": [[0, 0]]}]},
     "malformed"),
    ({"format": "aa-annotations/1", "width": 8, "height": 8, "fps": 8, "frames": []}, "0 frames"),
])
def test_bad_annotations_give_one_line(tmp_path, doc, expected):
    p = tmp_path / "bad.aa.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(AAError, match=expected) as e:
        load_annotations(p)
    assert "\n" not in str(e.value)


def test_not_json(tmp_path):
    p = tmp_path / "x.aa.json"
    p.write_text("{nope")
    with pytest.raises(AAError, match="not valid JSON"):
        load_annotations(p)


def test_resample_interpolates_in_time():
    kp = stick_figure(3, shift=4.0)  # x moves 4 px per source frame at 4 fps
    seq = PoseSequence(kp, 64, 64, 4.0)
    out = resample_poses(seq, 5, 8.0)  # twice the rate: half-frame steps
    np.testing.assert_allclose(out.keypoints[:, 0, 0] - kp[0, 0, 0], [0, 2, 4, 6, 8], atol=1e-5)
    held = resample_poses(seq, 10, 8.0)  # past the source's end the last pose is held
    np.testing.assert_allclose(held.keypoints[-1], kp[-1])
    assert held.fps == 8.0 and held.frames == 10


def test_resample_keeps_missing_joints_missing():
    kp = stick_figure(2)
    kp[:, 7] = 0
    out = resample_poses(PoseSequence(kp, 64, 64, 2.0), 4, 8.0)
    assert (out.keypoints[:, 7] == 0).all()


def test_fit_frame_letterboxes_and_person_fills():
    kp = stick_figure(1, size=64)
    wide = PoseSequence(kp * np.array([2, 1, 1], np.float32) + np.array([0, 0, 0], np.float32), 128, 64, 8)
    fitted = fit_poses(wide, 64, 64, mode="frame")  # 128×64 → 64×64: scale 0.5, centred vertically
    np.testing.assert_allclose(fitted.keypoints[0, 1, :2], [kp[0, 1, 0] * 2 * 0.5, kp[0, 1, 1] * 0.5 + 16], atol=1e-4)
    small = PoseSequence(kp * np.array([0.25, 0.25, 1], np.float32), 64, 64, 8)
    person = fit_poses(small, 64, 64, mode="person")
    vis = person.keypoints[0, :, 1]
    assert vis.max() - vis.min() > 35  # a 12 px figure is scaled up to fill most of the frame
    assert (person.keypoints[0, :, :2] >= 0).all() and (person.keypoints[0, :, :2] <= 64).all()


def test_skeleton_draws_limb_colours_on_black():
    kp = stick_figure(1)[0]
    img = render_skeleton(kp, 64, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    for k in (7, 8):  # right hip → knee, knee → ankle: check the midpoint carries the limb's colour
        a, b = LIMBS[k]
        mid = ((kp[a, :2] + kp[b, :2]) / 2).round().astype(int)
        expected = np.array(COLORS[k]) * LIMB_ALPHA
        np.testing.assert_allclose(img[mid[1], mid[0]], expected.astype(int), atol=1)
    assert (img[0:4, 0:4] == 0).all()  # background stays black
    np.testing.assert_array_equal(img[int(kp[1, 1]), int(kp[1, 0])], COLORS[1])  # neck joint at full colour


def test_missing_joint_draws_nothing():
    kp = stick_figure(1)[0]
    full = render_skeleton(kp, 64, 64)
    kp[10] = 0  # no right ankle: the knee→ankle limb disappears
    part = render_skeleton(kp, 64, 64)
    assert (full != part).any()
    assert part.sum() < full.sum()


def test_retarget_sets_bone_ratios():
    seq = PoseSequence(stick_figure(2), 64, 64, 8)
    target = bone_lengths(seq).copy()
    target[7] *= 1.5  # longer right thigh (hip → knee)
    out = retarget(seq, target)
    got = bone_lengths(out)
    np.testing.assert_allclose(got[7], target[7], rtol=1e-4)
    np.testing.assert_allclose(out.keypoints[:, 1], seq.keypoints[:, 1])  # neck stays put


def test_bad_pose_shape_is_one_line():
    with pytest.raises(AAError, match=r"expected \(frames, 18, 3\)"):
        PoseSequence(np.zeros((2, 17, 3)), 64, 64, 8)
