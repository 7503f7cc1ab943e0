"""Benchmark the start-up of ``hashbench run`` when every run of the grid is already done.

Run:  python benchmarks/bench_startup.py [--results results/reference] [--repeat 7] [--no-counts]

1. Wall time: ``hashbench run --results-dir <a copy of --results> --no-progress`` in a fresh
   process (the default experiment; every run done, so it only starts, checks and rewrites the
   tables), one warm-up, then the median (and min/max) of ``--repeat`` repetitions.
2. Counts (in-process, the same command through ``hashbench.cli.main``): how many methods and
   backbones are constructed (``Registry.create`` of kind method / backbone) and how many times
   a record file under ``runs/`` is read, on
   - the same no-op start-up, and
   - a small grid with pending runs: itq on backbone features and greedyhash with its own
     backbone, on ``bench-images`` (120 8x8 images, a dataset plugin of this script), 8 bits,
     2 seeds, a small timm model with random weights at 32 px, one epoch, so it runs in seconds;
     run twice: once with everything pending, once with everything done.

The copy of the results folder lives in a temporary folder and is removed afterwards; nothing
under ``--results`` is written.

Measured on the 2-core development VM (shared, so wall times move by ~10 % between runs), 150
reference records, 81-run default grid all done:

=====================================  ==========================  ==========================
                                       before (74e05b0 / 485f15d)  after (issue 12, items 4-5)
=====================================  ==========================  ==========================
wall, median of 7-9                    0.72 s / 0.68 s             0.68 s
record reads, no-op run                393 (3 x 81 + 150)          150
small grid, 4 pending: methods built   6                           4
small grid, 4 pending: backbones built 5                           1
small grid again, all done: reads      16                          4
=====================================  ==========================  ==========================

The wall time is dominated by imports (plugins ~0.3 s, pandas ~0.2 s): reading each record once
saves ~0.05 s of it, within the machine's noise.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HASHBENCH = str(Path(sys.executable).with_name("hashbench"))
ROOT = Path(__file__).resolve().parents[1]

#: the grid with pending runs of the counts: a deep method with its own backbone, a shallow one on features
PENDING = ["--methods", "itq,greedyhash", "--datasets", "bench-images", "--bits", "8", "--seeds", "0,1",
           "--backbone", "resnet18", "--pretrained", "false", "--input-size", "32",
           "--set", "greedyhash.backbone=resnet18", "--set", "greedyhash.pretrained=false",
           "--set", "greedyhash.input_size=32", "--set", "greedyhash.epochs=1", "--set", "greedyhash.bank_views=2",
           "--set", "greedyhash.batch_size=16"]


def bench_plugin():
    """A plugin module registering ``bench-images``: 4 classes of 8x8 grey images, 30 each."""
    import types
    from dataclasses import dataclass

    import numpy as np

    from hashbench import hookimpl
    from hashbench.components import Protocol, Split, Splits

    class BenchImages(Protocol):
        name = "bench-images"
        summary = "8x8 quadrant images (bench_startup only)"
        provides = ("images",)
        num_classes = 4

        @dataclass(frozen=True)
        class Config:
            split_seed: int = 0

        def fingerprint(self) -> str:
            return "bench-images-v1"

        def load(self):
            rng = np.random.default_rng(self.config.split_seed)
            y = np.repeat(np.arange(4), 30)
            x = rng.integers(0, 60, size=(len(y), 8, 8)).astype(np.uint8)
            for c in range(4):
                r, q = divmod(c, 2)
                x[y == c, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 180
            ids, pos = np.arange(len(y)), np.tile(np.arange(30), 4)

            def split(sel):
                return Split(x=x[sel], labels=y[sel], index=ids[sel])

            return Splits(train=split(ids[pos >= 10][::2]), val=split(ids[(pos >= 5) & (pos < 10)]),
                          query=split(ids[pos < 5]), database=split(ids[pos >= 10]))

    module = types.ModuleType("bench-startup")
    module.register_datasets = hookimpl(lambda: [BenchImages])
    return module


def wall_times(results: Path, repeat: int) -> list[float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [HASHBENCH, "run", "--results-dir", str(results), "--no-progress"]
    times = []
    for i in range(repeat + 1):  # the first is a warm-up (file system and bytecode caches)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=False)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"hashbench run failed ({proc.returncode}):\n{proc.stderr}")
        if i == 0:
            lines = proc.stderr.strip().splitlines()
            print(f"  {lines[-2] if len(lines) > 1 else proc.stderr.strip()}")
        else:
            times.append(elapsed)
    return times


@contextlib.contextmanager
def counting():
    """Count Registry.create by kind and reads of record files (``runs/*.json``, any API)."""
    from hashbench import registry as registry_module

    counts: Counter[str] = Counter()
    create = registry_module.Registry.create

    def counted_create(self, name, **params):
        counts[f"{self.kind} constructions"] += 1
        return create(self, name, **params)

    def is_record(path) -> bool:
        path = Path(path)
        return path.suffix == ".json" and path.parent.name == "runs" and not path.name.startswith(".")

    read_text, read_bytes, open_ = Path.read_text, Path.read_bytes, builtins.open

    def counted_read_text(self, *args, **kwargs):
        if is_record(self):
            counts["record reads"] += 1
        return read_text(self, *args, **kwargs)

    def counted_read_bytes(self):
        if is_record(self):
            counts["record reads"] += 1
        return read_bytes(self)

    def counted_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and "r" in mode and "+" not in mode and is_record(file):
            counts["record reads"] += 1
        return open_(file, mode, *args, **kwargs)

    registry_module.Registry.create = counted_create
    Path.read_text, Path.read_bytes = counted_read_text, counted_read_bytes
    builtins.open = counted_open
    try:
        yield counts
    finally:
        registry_module.Registry.create = create
        Path.read_text, Path.read_bytes = read_text, read_bytes
        builtins.open = open_


def _kind_attr() -> None:
    """Registry objects know their kind under ``kind`` (checked, so the counts are not silently 0)."""
    from hashbench.registry import registry

    if not hasattr(registry("method"), "kind"):
        raise SystemExit("hashbench.registry.Registry has no 'kind' attribute: adapt counting()")


def count_run(args: list[str], plugin=None) -> Counter[str]:
    from hashbench import registry as registry_module
    from hashbench.cli import main

    registry_module.reload(extra_plugins={"bench-startup": plugin} if plugin is not None else None)
    _kind_attr()
    with counting() as counts, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["run", *args, "--no-progress"])
    if code != 0:
        raise SystemExit(f"hashbench run {' '.join(args)} exited {code}:\n{err.getvalue()}")
    counts["runs"] = len(list(Path(args[args.index("--results-dir") + 1], "runs").glob("*.json")))
    return counts


def show(label: str, counts: Counter[str]) -> None:
    keys = ["method constructions", "backbone constructions", "record reads"]
    print(f"  {label}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "reference"),
                        help="a results folder whose default-experiment runs are all done")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-counts", action="store_true", help="wall time only")
    parser.add_argument("--no-pending", action="store_true", help="counts of the no-op start-up only")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        copy = Path(tmp) / "results"
        shutil.copytree(args.results, copy)
        records = len(list((copy / "runs").glob("*.json")))
        print(f"hashbench run, no-op start-up on a copy of {args.results} ({records} records):")
        times = wall_times(copy, args.repeat)
        print(f"  wall: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s "
              f"over {len(times)} runs ({', '.join(f'{t:.3f}' for t in times)})")
        if args.no_counts:
            return 0
        print("counts (in-process):")
        show("no-op run on the copy", count_run(["--results-dir", str(copy)]))
        if not args.no_pending:
            os.environ["HASHBENCH_CACHE"] = str(Path(tmp) / "cache")
            pending = Path(tmp) / "pending"
            plugin = bench_plugin()
            first = count_run([*PENDING, "--results-dir", str(pending)], plugin)
            show(f"small grid, {first['runs']} runs pending (itq + greedyhash on bench-images)", first)
            show("the same grid again, all done", count_run([*PENDING, "--results-dir", str(pending)], plugin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
