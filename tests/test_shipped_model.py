"""The shipped bundles (issue 3's acceptance): with no --base, a prompt and a built-in motion give a video in which
the judge finds the prompted scene and a person where the pose says — well above the floors; the same for the
few-step student models/aa-tiny-lcm at its own defaults (4 lcm steps, guidance 2), which must be distilled from the
shipped base (re-distil it whenever models/aa-tiny changes)."""
import numpy as np
import pytest

PROMPT = "a woman in a red shirt dancing in a snow field"
WOMAN_IN_RED = 1_000_005  # an evaluation identity (never seen in base training): a woman in a solid red shirt
# Three sampling seeds, judged by their median: some seeds lose the scene on short prompts like this one (aa-tiny
# f0a7f6b8: 2 of 81 clips measured, e.g. "a man running on a beach", seed 0; benchmarks/results/README.md), so a
# single seed would test the draw.
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=["aa-tiny", "aa-tiny-lcm"])
def generated(request):
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline
    from aa_runtime.poses import PoseSequence
    from aa_world.clips import ClipSpec, render_clip
    from aa_world.identity import sample_identity
    from aa_world.judge import Judge

    from aa_runtime.model import DEFAULT_BUNDLE

    # models/aa-tiny, as `aa-run` without --base; or its student, as `aa-run --base models/aa-tiny-lcm`
    base = load_base(None if request.param == "aa-tiny" else DEFAULT_BUNDLE.with_name(request.param))
    assert not base.untrained_unet, "models/aa-tiny must ship a trained UNet"
    identity = sample_identity(WOMAN_IN_RED)
    assert (identity.class_word, identity.shirt_colour, identity.shirt_pattern) == ("woman", "red", "solid")
    target = render_clip(ClipSpec(identity_seed=WOMAN_IN_RED, scene="snow field", scene_seed=0, motion="wave",
                                  frames=16, fps=8.0, width=64, height=64, seed=0))
    poses = PoseSequence(target.keypoints, 64, 64, 8.0)
    pipe = AnimatePipeline.from_base(base)
    videos = [pipe(PROMPT, poses, num_frames=16, seed=seed, pose_fit="frame", retarget_poses=False,
                   progress=False).frames for seed in SEEDS]
    return Judge.load(), videos, target


def test_the_judge_finds_the_prompted_scene(generated):
    from aa_world.metrics import scene_accuracy

    judge, videos, _ = generated
    scores = [scene_accuracy(judge.predict(frames), "snow field") for frames in videos]
    assert np.median(scores) >= 0.75, scores  # chance: 1 / 9 scenes


def test_the_person_follows_the_pose(generated):
    from aa_world.metrics import pose_iou

    judge, videos, target = generated
    outs = [judge.predict(frames) for frames in videos]
    iou = np.median([pose_iou(out, target.masks) for out in outs])
    # floor: the same silhouettes 20 px aside
    shifted = np.median([pose_iou(out, np.roll(target.masks, 20, axis=2)) for out in outs])
    assert iou >= 0.45 and iou >= 2 * shifted, (iou, shifted)


def test_the_shipped_student_is_distilled_from_the_shipped_base():
    from aa_runtime.model import DEFAULT_BUNDLE, load_base

    base, student = load_base(None), load_base(DEFAULT_BUNDLE.with_name("aa-tiny-lcm"))
    assert student.adapter_bases == (student.fingerprint, base.fingerprint), \
        "models/aa-tiny-lcm was distilled from another base: aa-train distill --teacher models/aa-tiny again"
    assert (student.defaults.scheduler, student.defaults.steps, student.defaults.guidance) == ("lcm", 4, 2.0)
