"""benchmarks/steps.py: ratios to the 25-step teacher and the bar, from rows whose numbers are set by hand."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


def _row(seconds: float, scene: float, pose: float, attributes: float, flicker: float, calls: int) -> dict:
    return {"unet_calls": calls, "unet_s": seconds * 0.8, "decode_s": 0.1, "total_s": seconds, "scene_accuracy": scene,
            "pose_iou": pose, "id_accuracy": attributes, "temporal_flicker": flicker, "object_accuracy": 1.0,
            "attributes": {"shirt_colour": [1, 2]}}


def test_ratios_and_the_bar_follow_the_rows():
    from benchmarks.steps import SAMPLERS, markdown, summarise

    rows, adapters = {}, {}
    for s in SAMPLERS:
        fast = s.model == "student"
        rows[s.label] = [_row(1.5 if fast else 10.0, 1.0, 0.6 if fast else 0.5, 0.7, 4.0, s.steps) for _ in range(3)]
        adapter_id = (0.58 if s.guidance == 1 else 0.66) if fast else 0.6
        adapters[s.label] = [{"id_accuracy": adapter_id, "scene_accuracy": 1.0}] * 2
    manifest = {"provenance": {"distill": {"method": "lcd", "steps": 9, "guidance": [4, 6], "skip": 20}}}
    bases = {"teacher": SimpleNamespace(fingerprint="t" * 16),
             "student": SimpleNamespace(fingerprint="s" * 16, manifest=manifest,
                                        defaults=SimpleNamespace(guidance=1.0))}
    people = [{"seed": 1}, {"seed": 2}]
    result = summarise(rows, adapters, bases, {"teacher": "T", "student": "S"}, 3, people)
    four = result["samplers"]["student 4 steps (lcm, guidance 1)"]
    assert four["ratio"]["pose_iou"] == pytest.approx(1.2) and four["ratio"]["unet_calls"] == pytest.approx(4 / 25)
    assert four["ratio"]["adapter_id"] == pytest.approx(0.58 / 0.6) and four["total_s"]["median"] == 1.5
    bar = result["bar"]
    row = bar["rows"][bar["default_row"]]
    assert bar["default_row"] == "student 4 steps (lcm, guidance 1)" and set(bar["rows"]) == {
        "student 4 steps (lcm, guidance 1)", "student 4 steps (lcm, guidance 2)"}
    assert row["clip_seconds_met"] and row["adapter_id_ratio"] == pytest.approx(0.58 / 0.6) and bar["met"]
    text = markdown(result)
    assert "1.50 s ✔" in text and "the student meets the bar" in text and "(lcm, guidance 2): 1.50 s" in text
    adapters["student 4 steps (lcm, guidance 1)"] = [{"id_accuracy": 0.5, "scene_accuracy": 1.0}] * 2
    again = summarise(rows, adapters, bases, {"teacher": "T", "student": "S"}, 3, people)["bar"]
    assert not again["met"] and again["rows"]["student 4 steps (lcm, guidance 2)"]["met"]  # the other row still does


def test_paired_speed_takes_turns_and_reports_each_bundles_median(tiny_bundle, monkeypatch):
    """Two bundles timed in turn: the order alternates clip by clip, each is run at its own defaults, and the medians
    and ratio are those of the durations each clip took (a clock advanced by the run itself)."""
    import benchmarks.steps as steps

    took = {"fast": [0.5, 0.7, 0.6, 0.9], "slow": [2.0, 1.0, 3.0, 4.0]}
    now, order = [0.0], []

    def fake_run(pipe, prompt, clip, s, seed):
        order.append(s.model)
        now[0] += took[s.model][sum(m == s.model for m in order) - 2] if seed else 100.0  # warm-up: not counted

    monkeypatch.setattr(steps, "_run", fake_run)
    result = steps.paired_seconds({"fast": str(tiny_bundle), "slow": str(tiny_bundle)}, 4, clock=lambda: now[0])
    assert order == ["fast", "slow", "fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]
    fast, slow = result["bundles"]["fast"], result["bundles"]["slow"]
    assert fast["seconds"] == pytest.approx(took["fast"]) and slow["seconds"] == pytest.approx(took["slow"])
    assert fast["median_s"] == pytest.approx(0.65) and slow["median_s"] == pytest.approx(2.5)
    assert result["ratio_to_first"]["slow"] == pytest.approx(2.5 / 0.65) and slow["min_s"] == pytest.approx(1.0)
    assert fast["sampler"]["steps"] > 0 and "| fast (" in steps.paired_markdown(result)
