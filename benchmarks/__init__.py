"""Benchmarks: UNet throughput per backend, training memory, judged quality, world render speed; `aa-bench`
runs the first two. Each writes JSON and markdown reports under benchmarks/results/."""
