"""Training arrays on disk: a folder of `.npy` files written block by block (rows in place, through a file handle)
and read back memory-mapped, so a data set or its latents never has to fit in RAM (the operating system pages in
the rows a batch touches). A folder is published by renaming its temporary twin, so a reader sees all of it or
nothing; `meta.json` beside the arrays carries what is not an array (captions, counts)."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

META = "meta.json"


def is_complete(folder: Path) -> bool:
    return (Path(folder) / META).is_file()


def scratch_path(folder: Path, tag: str) -> Path:
    """Where `folder` is built before it is published (`tag` tells concurrent builders apart)."""
    return folder.with_name(f".{folder.name}.tmp-{tag}")


class Rows:
    """Writable rows of one `.npy` file: `rows[lo:hi] = block` writes the block's bytes in place through a file
    handle (no mapping, so what was written leaves this process's memory), the way each rank fills its own rows."""

    def __init__(self, file: Path):
        header = np.load(file, mmap_mode="r")  # reads the header; the data stays unmapped until touched
        if not header.flags.c_contiguous:
            raise ValueError(f"{file}: only C-ordered arrays are written by rows")
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.file, self.row_bytes = Path(file), int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, rows: slice, block) -> None:
        lo, hi, step = rows.indices(self.shape[0])
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if step != 1 or block.shape != (hi - lo, *self.shape[1:]):
            raise ValueError(f"{self.file.name}: rows {lo}:{hi} take shape {(hi - lo, *self.shape[1:])}, "
                             f"not {block.shape}")
        with open(self.file, "r+b") as fh:
            fh.seek(self.offset + lo * self.row_bytes)
            fh.write(memoryview(block).cast("B"))


def create(scratch: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, Rows]:
    """Zero-filled arrays (name → (shape, dtype)) as `.npy` files in `scratch` (emptied first; sparse on disk until
    written), returned as writable `Rows`."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for k, (shape, dtype) in arrays.items():
        del_now = np.lib.format.open_memmap(scratch / f"{k}.npy", "w+", np.dtype(dtype), shape)
        del del_now  # header written, the file sized
    return open_rows(scratch, arrays)


def open_rows(scratch: Path, names) -> dict[str, Rows]:
    """The arrays `create` made, as writable `Rows` (another process fills its own rows)."""
    return {k: Rows(scratch / f"{k}.npy") for k in names}


def publish(scratch: Path, folder: Path, meta: dict) -> None:
    """Write `meta` and rename `scratch` to `folder`. When another process published `folder` first (every rank
    of a run may build the same data), its copy is kept and this one removed."""
    (scratch / META).write_text(json.dumps(meta))
    try:
        os.rename(scratch, folder)
    except OSError:
        if not is_complete(folder):
            raise
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def building(folder: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]], tag: str | None = None
             ) -> Iterator[tuple[dict[str, Rows], dict]]:
    """Create the arrays in a scratch folder, yield them with a meta dict to fill, then flush and publish. On an
    error the scratch folder is removed and `folder` stays as it was (absent)."""
    scratch = scratch_path(Path(folder), tag or str(os.getpid()))
    out, meta = create(scratch, arrays), {}
    try:
        yield out, meta
        publish(scratch, Path(folder), meta)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def read(folder: Path, names, mode: str = "r") -> tuple[dict[str, np.ndarray], dict]:
    """The published arrays, memory-mapped (`r` read-only; `c` copy-on-write, which `torch.from_numpy` takes without
    a warning: nothing is read until indexed and nothing is ever written back), and the meta dict."""
    folder = Path(folder)
    return ({k: np.load(folder / f"{k}.npy", mmap_mode=mode) for k in names},
            json.loads((folder / META).read_text()))
