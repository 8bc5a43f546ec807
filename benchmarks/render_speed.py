"""Rendering speed of the synthetic world: frames per second of `aa_world.render_clip` (one process).

    OMP_NUM_THREADS=1 python benchmarks/render_speed.py [--quick]

Scenarios are data (size, frames per clip, clips per repeat). Each is warmed up, then repeated;
the median frames/s over repeats is reported, with min and max. Writes
benchmarks/results/render_speed.json and .md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aa_world import motion_keypoints, render_clip, sample_clip_spec  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Scenario:
    """One measurement: clips of `frames` frames at size×size, `clips` clips per repeat."""

    size: int
    frames: int
    clips: int
    repeats: int = 5


SCENARIOS = (
    Scenario(size=64, frames=16, clips=48),
    Scenario(size=64, frames=8, clips=48),
    Scenario(size=128, frames=16, clips=12),
    Scenario(size=512, frames=16, clips=2, repeats=3),
)


def measure(sc: Scenario) -> dict:
    """Median/min/max frames per second of render_clip over random train specs (fixed seed)."""
    rng = np.random.default_rng(0)
    specs = [sample_clip_spec(rng, "train", frames=sc.frames, size=sc.size) for _ in range(sc.clips)]
    render_clip(specs[0])  # warm-up
    rates = []
    for _ in range(sc.repeats):
        t0 = time.perf_counter()
        for spec in specs:
            render_clip(spec)
        rates.append(sc.clips * sc.frames / (time.perf_counter() - t0))
    return {"scenario": asdict(sc), "frames_per_s": statistics.median(rates),
            "min_frames_per_s": min(rates), "max_frames_per_s": max(rates)}


def measure_keypoints(size: int = 512, frames: int = 64, repeats: int = 20) -> float:
    """Median frames/s of motion_keypoints (what `aa-run --motion` calls), over all motions."""
    from aa_world import MOTIONS

    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in MOTIONS:
            motion_keypoints(m, frames, 8.0, size, size)
        rates.append(len(MOTIONS) * frames / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    scenarios = [Scenario(s.size, s.frames, max(2, s.clips // 4), 2) for s in SCENARIOS] if args.quick \
        else list(SCENARIOS)
    rows = []
    for sc in scenarios:
        row = measure(sc)
        rows.append(row)
        print(f"{sc.size}x{sc.size} x{sc.frames} frames: {row['frames_per_s']:.0f} frames/s "
              f"(min {row['min_frames_per_s']:.0f}, max {row['max_frames_per_s']:.0f})", flush=True)
    kp_rate = measure_keypoints()
    print(f"motion_keypoints 512x512: {kp_rate:.0f} frames/s")
    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    doc = {"benchmark": "render_speed", "env": env, "aim_frames_per_s_64px": 1000, "results": rows,
           "motion_keypoints_frames_per_s_512px": kp_rate}
    lines = ["# render_clip speed (one process)", "",
             f"numpy {env['numpy']}, Python {env['python']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
             f"{env['cpu_count']} CPUs (shared), {env['time']}", "",
             "| size | frames/clip | clips × repeats | frames/s (median) | min | max |", "|---|---|---|---|---|---|"]
    for r in rows:
        sc = r["scenario"]
        lines.append(f"| {sc['size']}×{sc['size']} | {sc['frames']} | {sc['clips']} × {sc['repeats']} | "
                     f"{r['frames_per_s']:.0f} | {r['min_frames_per_s']:.0f} | {r['max_frames_per_s']:.0f} |")
    lines += ["", f"`motion_keypoints` at 512×512: {kp_rate:.0f} frames/s (median).", ""]
    write_report(RESULTS, "render_speed", doc, "\n".join(lines))


if __name__ == "__main__":
    main()
