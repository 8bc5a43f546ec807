"""Benchmark reports: one JSON document and its markdown table, written atomically side by side."""
from __future__ import annotations

import json
from pathlib import Path

from aa_runtime.files import atomic_path


def write_report(out_dir: Path, stem: str, results: dict, markdown: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` under out_dir; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown)
    return paths
