"""`aa-bench` (or `python -m benchmarks.bench`): UNet throughput per backend and training-step memory. Parses flags
and calls the typed functions of `benchmarks.throughput` and `benchmarks.memory`."""
from __future__ import annotations

import os
from pathlib import Path

import click

from aa_runtime.console import fail, quiet_libraries
from aa_runtime.device import BACKENDS
from aa_runtime.errors import AAError



def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """Benchmarks: `throughput` (UNet per backend), `memory` (one identity-training step), `swap` (another identity
    on one ONNX export), `steps` (quality against UNet calls: teacher and few-step student), `paired-speed` (bundles
    timed in turn in one process)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts: before any torch import
    quiet_libraries()


@main.command("throughput")
@click.option("--scenarios", default=None, help="Comma-separated scenario names [default: all; see --list].")
@click.option("--backends", default=",".join(BACKENDS), show_default=True, help="Comma-separated backends.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None, help="torch and onnxruntime threads [default: torch's].")
@click.option("--repeats", type=int, default=None, help="Timed calls per backend [default: per scenario].")
@click.option("--warmup", type=int, default=None, help="Untimed calls per backend [default: per scenario].")
@click.option("--base", "bundle", default=None, help="aa-tiny bundle [default: models/aa-tiny, else random].")
@click.option("--merge-ranks", default="4,16", show_default=True, help="Adapter ranks for the SD1.5 merge timing "
              "('' to skip).")
@click.option("--no-pipeline", is_flag=True, help="Skip the whole-pipeline clip timing.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where throughput.json/.md go [default: benchmarks/results].")
def throughput_cmd(scenarios, backends, device, threads, repeats, warmup, bundle, merge_ranks, no_pipeline,
                   list_only, out_dir):
    """Time the UNet per backend, interleaved, against eager PyTorch."""
    from benchmarks.throughput import RESULTS_DIR, SCENARIOS, ThroughputConfig, run_throughput

    if list_only:
        for s in SCENARIOS:
            click.echo(f"{s.name:>16}: {s.model} {s.height}×{s.width} px, {s.frames} frames, batch {s.batch}, "
                       f"on {'/'.join(s.devices)}, backends {','.join(s.backends)}")
        return
    try:
        cfg = ThroughputConfig(scenarios=_csv(scenarios), backends=_csv(backends), device=device, threads=threads,
                               repeats=repeats, warmup=warmup, bundle=bundle,
                               merge_ranks=tuple(int(r) for r in _csv(merge_ranks)), pipeline=not no_pipeline,
                               out_dir=out_dir or RESULTS_DIR)
        results = run_throughput(cfg)
    except AAError as e:
        fail(e)
    for s in results["scenarios"]:
        if s["status"] != "ok":
            click.echo(f"{s['name']}: skipped ({s['reason']})")
            continue
        click.echo(f"{s['name']}: {s['model_source']}")
        for b in s["backends"]:
            if b["status"] != "ok":
                click.echo(f"  {b['backend']:>13}: skipped ({b['reason']})")
                continue
            speed = f"{b['speedup_vs_eager']:.2f}× eager" if b["speedup_vs_eager"] else ""
            click.echo(f"  {b['backend']:>13}: {b['median_s']:.3f} s/call, {b['evals_per_s']:.2f} evals/s, "
                       f"{b['tflops']:.3f} TFLOP/s ({100 * b['peak_fraction']:.0f}% of peak), "
                       f"max |Δ| {b['max_abs_vs_eager']:.1e}, {speed}")
    for m in results["merge"]:
        click.echo(f"merge rank {m['rank']} ({m['targets']} layers): {m['merge_s']:.3f} s (load {m['load_s']:.3f} s)")
    click.echo(f"written: {(cfg.out_dir / 'throughput.json')} and .md")


@main.command("memory")
@click.option("--height", type=int, default=512, show_default=True)
@click.option("--width", type=int, default=512, show_default=True)
@click.option("--frames", type=int, default=16, show_default=True)
@click.option("--rank", type=int, default=16, show_default=True, help="LoRA rank on SPATIAL_ATTN2.")
@click.option("--modes", default="none,diffusers,full", show_default=True,
              help="Checkpointing modes to estimate: none, diffusers, full.")
@click.option("--no-measure", is_flag=True, help="Skip the real step (tiny on CPU, SD1.5 on a GPU).")
@click.option("--no-estimate", is_flag=True, help="Skip the SD1.5 estimates (minutes each).")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where memory.json/.md go [default: benchmarks/results].")
def memory_cmd(height, width, frames, rank, modes, no_measure, no_estimate, out_dir):
    """Peak memory of one identity-training step: measured, and estimated for SD1.5 without a GPU."""
    from benchmarks.memory import MemoryConfig, run_memory
    from benchmarks.throughput import RESULTS_DIR

    try:
        cfg = MemoryConfig(height=height, width=width, frames=frames, rank=rank, modes=_csv(modes),
                           measure=not no_measure, estimate=not no_estimate, out_dir=out_dir or RESULTS_DIR)
        results = run_memory(cfg)
    except AAError as e:
        fail(e)
    for e in results["estimates"]:
        fits = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in e["fits"].items())
        click.echo(f"{e['mode']:>58}: {e['peak_gib']:6.2f} GiB traced+optimizer, {e['with_overhead_gib']:6.2f} GiB "
                   f"with overhead ({fits}) [{e['trace_s']:.0f} s]")
    for m in results["measured"]:
        click.echo(f"measured {m['model']} on {m['device']}: peak {m['peak_bytes'] / 2 ** 30:.3f} GiB, step "
                   f"+{m['step_increase_bytes'] / 2 ** 30:.3f} GiB")
    click.echo(f"written: {(cfg.out_dir / 'memory.json')} and .md")


@main.command("swap")
@click.option("--models", default="aa-tiny,sd15", show_default=True, help="aa-tiny (the shipped base), sd15 (random "
              "SD1.5-shaped, ~6 GB of RAM).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Identities per model.")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where identity_swap.json/.md go [default: benchmarks/results].")
def swap_cmd(models, repeats, out_dir):
    """Another identity on onnxruntime: one base export with the attn2 weights replaced vs a re-export."""
    from benchmarks.identity_swap import RESULTS_DIR, SCENARIOS, run_identity_swap

    names = _csv(models)
    bad = [m for m in names if m not in SCENARIOS]
    if bad or not names or repeats < 1:
        fail(AAError("--models/--repeats", f"{models}/{repeats}", f"use some of {', '.join(SCENARIOS)} and ≥ 1"))
    run_identity_swap(names, repeats, out_dir or RESULTS_DIR)
    click.echo(f"written: {(out_dir or RESULTS_DIR) / 'identity_swap.json'} and .md")


@main.command("steps")
@click.option("--teacher", default=None, help="Base bundle [default: models/aa-tiny].")
@click.option("--student", default=None, help="Its few-step student from aa-train distill [default: models/aa-tiny-lcm].")
@click.option("--clips", type=int, default=18, show_default=True, help="Base-report clips per sampler.")
@click.option("--identities", type=int, default=2, show_default=True, help="Identity adapters (trained on the teacher).")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads.")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Where adapters are trained and kept (reused on a re-run) [a temporary folder].")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where steps.json/.md go [default: benchmarks/results].")
def steps_cmd(teacher, student, clips, identities, threads, work, out_dir):
    """Quality against UNet calls: the teacher at 25/10 steps against its few-step student at 1/2/4/8."""
    import tempfile

    import torch

    from aa_runtime.model import DEFAULT_BUNDLE
    from benchmarks.steps import RESULTS_DIR, markdown, run_steps

    teacher = Path(teacher) if teacher else DEFAULT_BUNDLE
    student = Path(student) if student else DEFAULT_BUNDLE.with_name("aa-tiny-lcm")
    for what, path, fix in (("teacher", teacher, "pass --teacher BUNDLE"),
                            ("student", student, "distil one: aa-train distill --teacher TEACHER -o STUDENT")):
        if not (path / "aa_bundle.json").is_file():
            fail(AAError(what, f"{path} is not an aa bundle", fix))
    if clips < 2 or identities < 1 or threads < 1:
        fail(AAError("--clips/--identities/--threads", f"{clips}/{identities}/{threads}", "use ≥ 2, ≥ 1 and ≥ 1"))
    torch.set_num_threads(threads)
    work = work or Path(tempfile.mkdtemp(prefix="aa-steps-"))
    result = run_steps(str(teacher), str(student), clips, identities, work, out_dir or RESULTS_DIR)
    click.echo(markdown(result))
    click.echo(f"written: {(out_dir or RESULTS_DIR) / 'steps.json'} and .md")


@main.command("paired-speed")
@click.argument("bundles", nargs=-1, required=True)
@click.option("--clips", type=int, default=12, show_default=True, help="Timed clips per bundle.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads.")
@click.option("--name", default="paired_speed", show_default=True, help="Report file stem.")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where NAME.json/.md go [default: benchmarks/results].")
def paired_speed_cmd(bundles, clips, threads, name, out_dir):
    """Clip seconds of two or more bundles (NAME=PATH or PATH), each at its own sampling defaults, timed in turn in
    one process: which is faster on this machine today, whatever its speed."""
    import torch

    from benchmarks.report import write_report
    from benchmarks.steps import RESULTS_DIR, paired_markdown, paired_seconds

    named = {}
    for item in bundles:
        label, _, path = item.rpartition("=")
        label = label or Path(path).name
        if not (Path(path) / "aa_bundle.json").is_file():
            fail(AAError("bundle", f"{path} is not an aa bundle", "pass aa bundle folders, e.g. models/aa-tiny-lcm"))
        if label in named:
            fail(AAError("bundle name", label, "give each bundle its own name: NAME=PATH"))
        named[label] = path
    if len(named) < 2 or clips < 1 or threads < 1:
        fail(AAError("bundles/--clips/--threads", f"{len(named)}/{clips}/{threads}",
                     "use ≥ 2 bundles, ≥ 1 and ≥ 1"))
    torch.set_num_threads(threads)
    result = paired_seconds(named, clips)
    write_report(out_dir or RESULTS_DIR, name, result, paired_markdown(result))
    click.echo(paired_markdown(result))
    click.echo(f"written: {(out_dir or RESULTS_DIR) / name}.json and .md")


if __name__ == "__main__":
    main()
