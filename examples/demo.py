"""`make demo` (python examples/demo.py --out out): the main job on the embedded default, from a fresh clone, in
minutes on a CPU.

1. Render the example reference video: an evaluation identity (never seen in base training) in one scene, with a
   turn so front and back are both seen; its `.aa.json` sidecar carries poses and masks.
2. `aa-train identity --describe --captioner judge --decouple --lora-reach wide --rank 16 --alpha 16` on it →
   out/me.safetensors: the world's judge reads the person's appearance off the reference (as a captioner would for
   real footage) and the adapter is trained with it in every caption and carries it; the person is also pasted onto
   other scenes (captioned with them) against class videos in other scenes and motions, so the adapter does not learn
   the beach along with her; LoRA reaches every spatial layer, not only the cross-attention. The demo's own target
   scene and motion are left out of both.
3. `aa-run` with the adapter in a new scene and an unseen motion → out/me-snow.mp4 (+ gif, preview, sidecar); the
   prompt's '<me> woman' is written out with the appearance.
4. The synthetic world's judge scores that video: is it this identity, in that scene? Next to it, the same run
   without the adapter (the class word only: the floor), the read appearance as words alone without the adapter
   (what the text does) and the renderer's own clip of the identity there (the ceiling) → out/judge.json, and a
   frame grid of them → out/grid.png.
5. The fast path: the same adapter on the few-step student models/aa-tiny-lcm (4 lcm steps, `aa-train distill`)
   → out/me-snow-fast.mp4, judged and timed next to the rest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aa_runtime.bundle import MANIFEST
from aa_runtime.errors import AAError
from aa_runtime.model import DEFAULT_BUNDLE
from aa_world.clips import EXAMPLE_REFERENCE

REFERENCE = EXAMPLE_REFERENCE  # the bundled example person (aa_world.clips)
TARGET = dict(scene="snow field", motion="dance", frames=16, seed=0)  # the new scene and motion of step 3


def base_for_demo(out: Path, log) -> tuple[str, bool]:
    """The embedded bundle when it holds a trained UNet; otherwise a random bundle, said plainly."""
    from aa_runtime.bundle import save_bundle
    from aa_runtime.model import load_base
    from aa_runtime.tiny import TinyConfig, build_random_base

    if (DEFAULT_BUNDLE / MANIFEST).is_file():
        if not load_base(DEFAULT_BUNDLE).untrained_unet:
            return str(DEFAULT_BUNDLE), True
        log(f"NOTE: {DEFAULT_BUNDLE} holds a trained VAE but no trained UNet yet")

    path = out / "random-base"
    if not (path / MANIFEST).is_file():
        save_bundle(build_random_base(TinyConfig(max_tokens=64)), path, name="random (untrained)")
    log("NOTE: the embedded model aa-tiny is not trained yet (see issue 3): this demo runs the whole pipeline "
        "on RANDOM weights, so the video shows noise, not a person. The files, formats and timings are real.")
    return str(path), False


def reference_video(out: Path) -> Path:
    from aa_world.clips import ClipSpec, render_clip, write_clip

    path = out / "reference.mp4"
    if not path.is_file():
        write_clip(render_clip(ClipSpec(**REFERENCE)), path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--stage1-steps", type=int, default=None)
    ap.add_argument("--stage2-steps", type=int, default=None)
    args = ap.parse_args(argv)
    from aa_runtime.console import quiet_libraries
    from aa_runtime.generate import RunConfig, run

    quiet_libraries()  # before aa_train.identity pulls in peft → bitsandbytes, whose import-time notices reach stderr
    from aa_runtime.adapters import describe_identifier

    from aa_train.identity import WIDE_REACH, IdentityTrainConfig, decoupled_settings, train_identity
    from aa_train.preprocess import ReadSettings

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    try:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        base, trained = base_for_demo(out, log)
        ref = reference_video(out)
        log(f"[1/5] reference video: {ref} (an evaluation identity turning on a beach)")
        steps = {k: v for k, v in (("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps)) if v}
        if not trained and not steps:
            steps = {"stage1_steps": 30, "stage2_steps": 10}  # random weights: show the loop, do not burn minutes
        log("[2/5] aa-train identity ...")
        cls = _class_word()
        # the demo's own new scene and motion stay unseen in training: an honest transfer test
        decoupled = decoupled_settings(cls, exclude_scenes=(REFERENCE["scene"], TARGET["scene"]),
                                       exclude_motions=(REFERENCE["motion"], TARGET["motion"]))
        result = train_identity(IdentityTrainConfig(video=ref, name="me", class_word=cls, base=base,
                                                    output=out / "me.safetensors", cache_dir=out / "cache",
                                                    describe=True, read=ReadSettings(captioner="judge"),
                                                    **WIDE_REACH, **decoupled, **steps),
                                log=log)
        log(f"      appearance read off the reference: {result.appearance!r}")
        log("[3/5] aa-run in a new scene with an unseen motion ...")
        common = dict(base=base, motion=TARGET["motion"], frames=TARGET["frames"], seed=0,
                      progress=sys.stderr.isatty())
        prompt = f"a <me> {cls} dancing in a {TARGET['scene']}"
        written = run(RunConfig(prompt=prompt, output=out / "me-snow.mp4", adapter=str(result.adapter), **common))
        log("[4/5] judge: the same run without the adapter (floor), the appearance as words alone, and the rendered "
            "identity there (ceiling) ...")
        floor = run(RunConfig(prompt=f"a {cls} dancing in a {TARGET['scene']}", output=out / "class-snow.mp4",
                              gif=False, **common))
        words = describe_identifier(prompt, "<me>", cls, result.appearance)
        described = run(RunConfig(prompt=words, output=out / "words-snow.mp4", gif=False, **common))
        videos = {"adapter": written["video"], "no adapter": floor["video"], "words only": described["video"]}
        student = DEFAULT_BUNDLE.with_name("aa-tiny-lcm")
        if trained and (student / MANIFEST).is_file():
            log("[5/5] the fast path: the same adapter on the few-step student aa-tiny-lcm ...")
            fast = run(RunConfig(prompt=prompt, output=out / "me-snow-fast.mp4", adapter=str(result.adapter),
                                 gif=False, **(common | {"base": str(student)})))
            videos["adapter, 4 steps"] = fast["video"]
        scores = judge_demo(videos, out / "judge.json")
        grid = frame_grid(out / "grid.png", ref, videos)
    except AAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"demo finished in {time.time() - t0:.0f} s{'' if trained else ' (random weights)'}")
    print(f"  reference: {ref}")
    print(f"    adapter: {result.adapter}")
    for kind, path in written.items():
        print(f"{kind:>11}: {path}")
    print(f"      judge: {scores['path']}")
    print(f"       grid: {grid} (rows: reference, {', '.join(videos)}, ceiling)")
    seconds = {name: _clip_seconds(path) for name, path in videos.items()}
    for name, row in scores["videos"].items():
        took = f", {seconds[name]:.1f} s to sample" if seconds.get(name) is not None else ""
        print(f"{name:>16}: ID accuracy {row['id_accuracy']:.2f}, scene accuracy {row['scene_accuracy']:.2f}{took}")
    return 0


def _clip_seconds(video: Path) -> float | None:
    """Prompt-to-frames seconds of an aa-run output, from its JSON sidecar."""
    import json

    sidecar = video.with_suffix(".json")
    return json.loads(sidecar.read_text())["timings"].get("total_s") if sidecar.is_file() else None


def judge_demo(videos: dict[str, Path], path: Path) -> dict:
    """Judge scores of each named video (the adapter's, the no-adapter floor, …) and of the rendered ceiling;
    written to `path`.
    Scored from the written mp4 files, as a user sees them; the ceiling is the renderer's clip of the same identity
    with the same motion and seed (so the same views) in the target scene. No pose IoU: `aa-run --motion` places
    the figure for a default body, the renderer for the identity's, so the silhouettes need not overlap."""
    from aa_runtime.video import read_video, write_json
    from aa_world.clips import ClipSpec, render_clip
    from aa_world.judge import Judge
    from aa_world.metrics import score_video

    judge = Judge.load()
    frames = {name: read_video(v).frames for name, v in videos.items()}
    h, w = next(iter(frames.values())).shape[1:3]
    target = render_clip(ClipSpec(identity_seed=REFERENCE["identity_seed"], scene_seed=101, fps=REFERENCE["fps"],
                                  width=w, height=h, **TARGET))
    rows = {k: {m: v for m, v in score_video(judge, f, target, TARGET["scene"], (), REFERENCE["scene"]).items()
                if m in ("id_accuracy", "scene_accuracy", "background_leakage")}
            for k, f in (frames | {"ceiling": target.frames}).items()}
    report = {"identity_seed": REFERENCE["identity_seed"], "scene": TARGET["scene"], "motion": TARGET["motion"],
              "judge": judge.source, "videos": rows}
    write_json(path, report)
    return report | {"path": path}


def frame_grid(path: Path, reference: Path, videos: dict[str, Path], columns: int = 8, zoom: int = 3) -> Path:
    """A PNG a person can look at: rows of `columns` evenly spaced frames of the reference, each named video (the
    adapter's, the no-adapter one, …) and the renderer's own clip of the identity in the target scene (the
    ceiling), each labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    from aa_runtime.files import atomic_path
    from aa_runtime.video import read_video
    from aa_world.clips import ClipSpec, render_clip

    rows = {"reference": read_video(reference).frames} | {name: read_video(v).frames for name, v in videos.items()}
    h, w = rows[next(iter(videos))].shape[1:3]
    rows["ceiling"] = render_clip(ClipSpec(identity_seed=REFERENCE["identity_seed"], scene_seed=101,
                                           fps=REFERENCE["fps"], width=w, height=h, **TARGET)).frames
    label_w = 80
    sheet = Image.new("RGB", (label_w + columns * w * zoom, len(rows) * h * zoom), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, frames) in enumerate(rows.items()):
        pick = np.linspace(0, len(frames) - 1, columns).round().astype(int)
        strip = np.concatenate([frames[i] for i in pick], 1)  # (h, columns·w, 3)
        tile = Image.fromarray(strip).resize((columns * w * zoom, h * zoom), Image.NEAREST)
        sheet.paste(tile, (label_w, r * h * zoom))
        draw.text((4, r * h * zoom + h * zoom // 2 - 6), name, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _class_word() -> str:
    from aa_world.identity import sample_identity

    return sample_identity(REFERENCE["identity_seed"]).class_word


if __name__ == "__main__":
    sys.exit(main())
