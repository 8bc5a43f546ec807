"""Quality against UNet calls: the base (teacher) at 25 and 10 steps with guidance, against its few-step student
(`aa-train distill`) at 1, 2, 4 and 8 steps without, on the base quality report's clips and with identity adapters
trained on the teacher, all measured in one run.

    aa-bench steps [--student models/aa-tiny-lcm] [--clips 18] [--identities 2] [--threads 2]

Per sampler: UNet calls per clip, clip seconds (UNet, VAE decode, end to end: prompt, poses, denoising and decode),
scene accuracy, pose IoU, attributes-from-text, flicker (the base report's clips) and ID accuracy of the identity
adapters in new scenes and motions (the identity report's targets), each as mean ± sd and as a ratio to the 25-step
teacher. Writes benchmarks/results/steps.{json,md}."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.quality import (BaseScenario, IdentityScenario, _attributes, reusable_adapter,  # noqa: E402
                                base_clips, identity_picks, reference_clip, target_clips, variant_settings)
from benchmarks.report import write_report  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RECIPE = "described-judge-wide-composite"  # the identity recipe make demo and the studio train (quality.VARIANTS)
BAR = {"clip_seconds": 2.0, "steps": 4, "ratio": 0.95}  # the few-step bar for aa-tiny on a 2-core CPU


@dataclass(frozen=True)
class Sampler:
    model: str  # teacher | student
    steps: int
    scheduler: str
    guidance: float

    @property
    def label(self) -> str:
        return f"{self.model} {self.steps} steps ({self.scheduler}, guidance {self.guidance:g})"


SAMPLERS = (Sampler("teacher", 25, "dpm++", 5.0), Sampler("teacher", 10, "dpm++", 5.0),
            *(Sampler("student", s, "lcm", 1.0) for s in (1, 2, 4, 8)),
            # classifier-free guidance on top of the baked-in guidance: twice the calls, for what an adapter adds
            Sampler("student", 4, "lcm", 2.0))
MEASURES = ("unet_calls", "unet_s", "decode_s", "total_s", "scene_accuracy", "pose_iou", "attributes",
            "temporal_flicker", "adapter_id")


def _run(pipe, prompt: str, clip, s: Sampler, seed: int):
    from aa_runtime.poses import PoseSequence

    h, w = clip.frames.shape[1:3]
    return pipe(prompt, PoseSequence(clip.keypoints, w, h, clip.spec.fps), num_frames=len(clip.frames),
                fps=clip.spec.fps, height=h, width=w, num_inference_steps=s.steps, guidance_scale=s.guidance,
                scheduler=s.scheduler, seed=seed, pose_fit="frame", retarget_poses=False, progress=False)


def train_adapters(teacher_path: str, identities: int, work: Path, log) -> list[dict]:
    """The identity report's first `identities` identities, each an adapter trained on the teacher with RECIPE
    (reused from `work` when one trained on this teacher with the same settings is there).
    Returns [{seed, ref_scene, class_word, adapter, targets}]."""
    from aa_runtime.model import load_base
    from aa_train.identity import IdentityTrainConfig, train_identity
    from aa_world.clips import write_clip

    fingerprint = load_base(teacher_path).fingerprint
    scn = IdentityScenario(identities=identities)
    out = []
    for k, seed, ref_scene in identity_picks(scn):  # the identity report's draw
        ref = reference_clip(scn, k, seed, ref_scene, 64)
        folder = work / f"id{k}"
        write_clip(ref, folder / "ref.mp4")
        cls = ref.identity.class_word
        adapter = folder / f"{RECIPE}.safetensors"
        cfg = IdentityTrainConfig(video=folder / "ref.mp4", name="me", class_word=cls, base=teacher_path,
                                  output=adapter, cache_dir=work / "cache", preview=False,
                                  **variant_settings(scn, RECIPE, cls, ref_scene))
        if reusable_adapter(cfg, fingerprint) is None:  # none yet, or another teacher's or other settings
            train_identity(cfg, log=lambda m: log(f"[id{k}] {m}"))
        targets = target_clips(scn, seed, 64)
        out.append({"seed": seed, "ref_scene": ref_scene, "class_word": cls, "adapter": adapter, "targets": targets})
    return out


def measure(teacher_path: str, student_path: str, clips: int, identities: int, work: Path, log=print) -> dict:
    from aa_runtime.adapters import load_adapter
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline
    from aa_world.captions import full_caption, identity_caption
    from aa_world.judge import Judge
    from aa_world.metrics import score_video

    judge = Judge.load()
    paths = {"teacher": teacher_path, "student": student_path}
    bases = {k: load_base(p) for k, p in paths.items()}
    teacher_fp = bases["teacher"].fingerprint
    if bases["student"].adapter_bases[-1] != teacher_fp:
        raise SystemExit(f"student: {student_path} was not distilled from {teacher_path} ({teacher_fp}); "
                         "pass the student of this teacher (aa-train distill --teacher ...)")
    scn = BaseScenario(clips=clips)
    report_clips = base_clips(scn, 64)  # the base report's clips
    people = train_adapters(teacher_path, identities, work, log)
    rows = {s.label: [] for s in SAMPLERS}
    adapter_rows = {s.label: [] for s in SAMPLERS}
    for s in SAMPLERS:
        pipe = AnimatePipeline.from_base(bases[s.model])
        _run(pipe, "a person", report_clips[0], s, 0)  # warm-up, not counted
        for i, clip in enumerate(report_clips):
            caption = full_caption(clip.identity, clip.spec.motion, clip.spec.scene, clip.spec.objects)
            out = _run(pipe, caption, clip, s, scn.seed + i)
            t = out.timings
            rows[s.label].append(score_video(judge, out.frames, clip, clip.spec.scene, clip.spec.objects)
                                 | {"unet_calls": t["unet_evals"], "unet_s": t["denoise_s"], "decode_s": t["decode_s"],
                                    "total_s": t["total_s"]})
        for person in people:
            pipe = AnimatePipeline.from_base(load_base(paths[s.model]))  # a fresh UNet per identity
            pipe.set_identity(load_adapter(person["adapter"]))
            for j, clip in enumerate(person["targets"]):
                prompt = identity_caption("<me>", person["class_word"], clip.spec.motion, clip.spec.scene)
                out = _run(pipe, prompt, clip, s, IdentityScenario().seed + j)
                adapter_rows[s.label].append(score_video(judge, out.frames, clip, clip.spec.scene, (),
                                                         person["ref_scene"]) | {"identity": person["seed"]})
        r = rows[s.label]
        log(f"[steps] {s.label}: total {statistics.median(x['total_s'] for x in r):.2f} s, scene "
            f"{np.mean([x['scene_accuracy'] for x in r]):.2f}, pose {np.mean([x['pose_iou'] for x in r]):.3f}, "
            f"adapter ID {np.mean([x['id_accuracy'] for x in adapter_rows[s.label]]):.3f}")
    return summarise(rows, adapter_rows, bases, paths, clips, people)


def _stat(values) -> dict:
    v = [float(x) for x in values if x is not None]
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "median": float(np.median(v)), "n": len(v)}


def summarise(rows, adapter_rows, bases, paths, clips, people) -> dict:
    table = {}
    for s in SAMPLERS:
        r, a = rows[s.label], adapter_rows[s.label]
        attrs = _attributes(r)
        table[s.label] = {
            "sampler": asdict(s),
            "unet_calls": _stat(x["unet_calls"] for x in r), "unet_s": _stat(x["unet_s"] for x in r),
            "decode_s": _stat(x["decode_s"] for x in r), "total_s": _stat(x["total_s"] for x in r),
            "scene_accuracy": _stat(x["scene_accuracy"] for x in r), "pose_iou": _stat(x["pose_iou"] for x in r),
            # attributes-from-text: each clip's attribute accuracy against its full caption (the judge's hits pooled
            # over the attributes: the base report's description ID); sd over the clips
            "attributes": _stat(x["id_accuracy"] for x in r),
            "attribute_table": attrs,  # per attribute, pooled over the clips
            "temporal_flicker": _stat(x["temporal_flicker"] for x in r),
            "adapter_id": _stat(x["id_accuracy"] for x in a),
            "adapter_scene": _stat(x["scene_accuracy"] for x in a),
        }
    ref = table[SAMPLERS[0].label]
    for entry in table.values():
        entry["ratio"] = {m: entry[m]["mean"] / ref[m]["mean"] if ref[m]["mean"] else None for m in MEASURES}
    bar = bar_check(table, bases["student"].defaults.guidance)
    return {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "load_average_end": os.getloadavg()[0],
                     "teacher": {"path": paths["teacher"], "fingerprint": bases["teacher"].fingerprint},
                     "student": {"path": paths["student"], "fingerprint": bases["student"].fingerprint,
                                 "distill": {k: v for k, v in bases["student"].manifest["provenance"]["distill"].items()
                                             if k in ("method", "steps", "guidance", "skip")}},
                     "clips": clips, "identities": [p["seed"] for p in people], "recipe": RECIPE, "bar": BAR},
            "samplers": table, "bar": bar}


def bar_check(table: dict, default_guidance: float) -> dict:
    """The bar for each student row at BAR["steps"] steps: clip seconds (median) and the pose IoU, scene and adapter
    ID ratios to the 25-step teacher; `met` for the row the student bundle samples with by default."""
    rows = {}
    for label, e in table.items():
        s = e["sampler"]
        if s["model"] != "student" or s["steps"] != BAR["steps"]:
            continue
        r = {"guidance": s["guidance"], "clip_seconds": e["total_s"]["median"],
             **{f"{m}_ratio": e["ratio"][m] for m in ("pose_iou", "scene_accuracy", "adapter_id")}}
        r["clip_seconds_met"] = r["clip_seconds"] <= BAR["clip_seconds"]
        r["met"] = r["clip_seconds_met"] and all(r[f"{m}_ratio"] >= BAR["ratio"]
                                                 for m in ("pose_iou", "scene_accuracy", "adapter_id"))
        rows[label] = r
    default = next((k for k, r in rows.items() if r["guidance"] == default_guidance), None)
    return {"rows": rows, "default_row": default, "met": bool(default and rows[default]["met"])}


def _cell(entry, m, digits=3) -> str:
    s = entry[m]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(result: dict) -> str:
    m, bar = result["meta"], result["bar"]
    lines = ["# Quality against UNet calls: teacher and few-step student", "",
             f"{m['date']}, {m['machine']}, {m['cpus']} CPUs, {m['threads']} torch threads, torch {m['torch']}; "
             f"load average {m['load_average_end']:.1f} at the end. Teacher `{m['teacher']['path']}` "
             f"({m['teacher']['fingerprint']}), student `{m['student']['path']}` ({m['student']['fingerprint']}: "
             f"{m['student']['distill']['method']}, {m['student']['distill']['steps']} steps, guidance "
             f"{m['student']['distill']['guidance']} baked in).", "",
             f"{m['clips']} clips of the base quality report (16 frames, 64 px, full captions); adapter ID: "
             f"{len(m['identities'])} identities ({m['recipe']}, trained on the teacher) × 3 new scenes and "
             "motions. Clip seconds: the pipeline from prompt to frames (text, poses, denoising, VAE decode), one "
             "process, after a warm-up clip; loading the model is not included.", "",
             "| sampler | UNet calls | UNet s | decode s | clip s (median) | scene | pose IoU | attributes | "
             "flicker | adapter ID |", "|---" * 10 + "|"]
    for label, e in result["samplers"].items():
        lines.append(f"| {label} | {e['unet_calls']['mean']:.0f} | {e['unet_s']['mean']:.2f} | "
                     f"{e['decode_s']['mean']:.2f} | {e['total_s']['median']:.2f} | {_cell(e, 'scene_accuracy', 2)} | "
                     f"{_cell(e, 'pose_iou')} | {_cell(e, 'attributes')} | "
                     f"{_cell(e, 'temporal_flicker', 2)} | {_cell(e, 'adapter_id')} |")
    lines += ["", "Ratio to the 25-step teacher (flicker: lower is better):", "",
              "| sampler | " + " | ".join(MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
    for label, e in result["samplers"].items():
        lines.append(f"| {label} | " + " | ".join("—" if e["ratio"][k] is None else f"{e['ratio'][k]:.2f}"
                                                 for k in MEASURES) + " |")
    b = m["bar"]
    lines += ["", f"**Bar** (student at {b['steps']} steps): clip ≤ {b['clip_seconds']} s, and pose IoU, scene and "
              f"adapter ID each ≥ {b['ratio']} × the 25-step teacher's:", ""]
    for label, r in bar["rows"].items():
        mark = " (the student bundle's default)" if label == bar["default_row"] else ""
        lines.append(f"- {label}{mark}: {r['clip_seconds']:.2f} s {'✔' if r['clip_seconds_met'] else '✘'}; "
                     f"{r['pose_iou_ratio']:.2f}, {r['scene_accuracy_ratio']:.2f}, {r['adapter_id_ratio']:.2f}: "
                     f"{'met' if r['met'] else 'not met'}.")
    lines += ["", f"At its default sampler the student {'meets' if bar['met'] else 'does not meet'} the bar."]
    return "\n".join(lines) + "\n"


def run_steps(teacher: str, student: str, clips: int, identities: int, work: Path, out_dir: Path,
              log=lambda m: print(m, file=sys.stderr)) -> dict:
    result = measure(teacher, student, clips, identities, work, log)
    write_report(out_dir, "steps", result, markdown(result))
    return result


def paired_seconds(bundles: dict[str, str], clips: int, clock=time.perf_counter) -> dict:
    """Clip seconds of several bundles of the same size, each at its own sampling defaults, timed in one process
    with the bundles taking turns clip by clip (the order reversed every other clip), so a machine that runs slower
    one day slows them alike. After one warm-up clip each; the base report's clips and captions. Returns
    {"meta", "bundles": {name: {path, fingerprint, sampler, seconds: [...], median_s, min_s}}, "ratio_to_first"}."""
    from aa_runtime.model import load_base
    from aa_runtime.pipeline import AnimatePipeline
    from aa_world.captions import full_caption

    bases = {k: load_base(p) for k, p in bundles.items()}
    pipes = {k: AnimatePipeline.from_base(b) for k, b in bases.items()}
    samplers = {k: Sampler(k, b.defaults.steps, b.defaults.scheduler, b.defaults.guidance) for k, b in bases.items()}
    report_clips = base_clips(BaseScenario(clips=clips + 1), next(iter(bases.values())).defaults.width)
    prompts = [full_caption(c.identity, c.spec.motion, c.spec.scene, c.spec.objects) for c in report_clips]
    for k in bundles:  # warm-up
        _run(pipes[k], prompts[0], report_clips[0], samplers[k], 0)
    seconds = {k: [] for k in bundles}
    for i in range(1, clips + 1):
        for k in (list(bundles) if i % 2 else list(bundles)[::-1]):
            t = clock()
            _run(pipes[k], prompts[i], report_clips[i], samplers[k], i)
            seconds[k].append(clock() - t)
    first = statistics.median(seconds[next(iter(bundles))])
    out = {k: {"path": bundles[k], "fingerprint": bases[k].fingerprint, "sampler": asdict(samplers[k]),
               "seconds": seconds[k], "median_s": statistics.median(seconds[k]), "min_s": min(seconds[k])}
           for k in bundles}
    return {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "clips": clips, "frames": len(report_clips[0].frames),
                     "size": int(report_clips[0].frames.shape[2])},
            "bundles": out, "ratio_to_first": {k: v["median_s"] / first for k, v in out.items()}}


def paired_markdown(result: dict) -> str:
    m = result["meta"]
    lines = ["# Clip seconds, bundles timed in turn", "",
             f"{m['date']}, {m['machine']}, {m['cpus']} CPUs, {m['threads']} torch threads, torch {m['torch']}. "
             f"{m['clips']} clips of the base quality report ({m['frames']} frames, {m['size']} px), each bundle at its "
             "own sampling defaults, the bundles taking turns clip by clip in one process (order reversed every other "
             "clip), after a warm-up clip each; prompt to frames.", "",
             "| bundle | fingerprint | sampler | clip s (median) | fastest | ratio to the first |",
             "|---|---|---|---|---|---|"]
    for k, b in result["bundles"].items():
        s = b["sampler"]
        lines.append(f"| {k} (`{b['path']}`) | {b['fingerprint']} | {s['steps']} {s['scheduler']} steps, guidance "
                     f"{s['guidance']:g} | {b['median_s']:.2f} | {b['min_s']:.2f} | "
                     f"{result['ratio_to_first'][k]:.2f} |")
    return "\n".join(lines) + "\n"
