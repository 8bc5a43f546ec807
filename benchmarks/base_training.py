"""Base-training report of one run: each stage's samples/s, seconds, peak GPU memory and loss, read from the bundle
`aa-train base` wrote (its provenance), with the device and the loss curve from the log.

    python -m benchmarks.base_training BUNDLE --log train.log --device "NVIDIA H100 80GB" --name base_training_h100
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STEP_LINE = re.compile(r"^\[(image|video|vae)\] step (\d+)/(\d+) loss ([0-9.]+)")


def loss_curve(log: Path) -> dict[str, list[list[float]]]:
    """Stage → [[step, mean loss of the last 50 steps], ...] from the trainer's progress lines."""
    curve: dict[str, list[list[float]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = STEP_LINE.match(line.strip())
        if m:
            curve.setdefault(m.group(1), []).append([int(m.group(2)), float(m.group(4))])
    return curve


def report(bundle: Path, log: Path | None, device: str, extra: dict | None = None) -> dict:
    manifest = json.loads((bundle / "aa_bundle.json").read_text())
    prov = manifest["provenance"]
    recipe = prov.get("recipe", {})
    return {"device": device, "bundle_fingerprint": manifest["fingerprint"], "processes": prov.get("processes"),
            "recipe": {k: recipe.get(k) for k in ("image_batch", "video_batch", "mixed_precision", "size", "frames",
                                                   "gradient_accumulation", "data", "init", "motion_module")},
            "stages": prov.get("stages", {}), "loss_curve": loss_curve(log) if log and log.is_file() else {},
            **(extra or {})}


def write(result: dict, name: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{name}.json", folder / f"{name}.md"
    js.write_text(json.dumps(result, indent=1))
    r = result["recipe"]
    lines = [f"# Base training — {result['device']}", "",
             f"Bundle {result['bundle_fingerprint']}, {result['processes']} process(es), batch image "
             f"{r['image_batch']} / video {r['video_batch']}, {r['size']} px, {r['frames']} frames, mixed precision "
             f"{r['mixed_precision']}, data {r['data']}.", "",
             "| stage | steps | seconds | samples/s | peak GPU memory (GB) | final loss |", "|---|---|---|---|---|---|"]
    for stage, s in result["stages"].items():
        lines.append(f"| {stage} | {s.get('steps')} | {s.get('seconds', '–')} | {s.get('samples_per_s', '–')} | "
                     f"{s.get('peak_memory_gb', '–')} | {s.get('final_loss')} |")
    for key, value in result.items():
        if key not in ("device", "bundle_fingerprint", "processes", "recipe", "stages", "loss_curve"):
            lines += ["", f"{key}: {json.dumps(value)}"]
    if result["loss_curve"]:
        lines += ["", "Loss (mean of the last 50 steps) by step: " + "; ".join(
            f"{stage} " + ", ".join(f"{int(s)}: {v:.4f}" for s, v in points[:: max(1, len(points) // 8)])
            for stage, points in result["loss_curve"].items())]
    md.write_text("\n".join(lines) + "\n")
    return js, md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="base_training")
    ap.add_argument("--extra", type=Path, default=None, help="A JSON file of more measurements to include.")
    args = ap.parse_args()
    extra = json.loads(args.extra.read_text()) if args.extra and args.extra.is_file() else None
    for path in write(report(args.bundle, args.log, args.device, extra), args.name):
        print(path)


if __name__ == "__main__":
    main()
