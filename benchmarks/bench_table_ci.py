"""Benchmark ``hashbench table --ci`` on the reference results: it must stay interactive.

Run:  python benchmarks/bench_table_ci.py [--results results/reference] [--repeat 5]

Each command runs in a fresh process on a copy of ``--results`` (in a temporary folder, removed
afterwards; nothing under ``--results`` is written), one warm-up, then the median (and min/max)
of ``--repeat`` repetitions, in this order and in the same run:

1. ``hashbench table --format md`` with no per-query file in the copy (the tables as before
   issue 15: no marks, no intervals): the baseline;
2. ``hashbench table --format md`` (marks: each row tested against its column's best);
3. ``hashbench table --format md --ci`` (marks and an interval in every cell);
4. ``hashbench table --ci`` (all three formats, as a user runs it).

Printed: each wall time and its ratio to the baseline, and the number of cells and paired
tests of the reference tables.

Measured on the 2-core development VM, quiet, 2026-11-30 (150 reference records; the map
table: 50 cells, 44 paired tests; median of 5):

====================================  ======  ==========
command                               median  / baseline
====================================  ======  ==========
table, no per-query files (baseline)  0.66 s  1.00x
table (marks)                         1.74 s  2.66x
table --ci (marks, intervals)         2.69 s  4.10x
table --ci, md + csv + latex          2.47 s  3.77x
====================================  ======  ==========

Interactive: a few seconds, of which ~0.6 s is start-up (imports) and each bootstrap (2,000
replicates of 1,000 queries) ~20 ms.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HASHBENCH = str(Path(sys.executable).with_name("hashbench"))
ROOT = Path(__file__).resolve().parents[1]


def wall(args: list[str], repeat: int) -> list[float]:
    """Wall seconds of ``hashbench ARGS`` in a fresh process: one warm-up, then ``repeat`` runs."""
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        subprocess.run([HASHBENCH, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def strip_per_query(folder: Path) -> None:
    """Remove the per-query files and the records' references to them (records as before issue 15)."""
    for path in (folder / "runs").glob("*.queries.npz"):
        path.unlink()
    for path in (folder / "runs").glob("*.json"):
        data = json.loads(path.read_text())
        if data.pop("per_query", None) is not None:
            path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "reference"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    source = Path(args.results)
    if not list((source / "runs").glob("*.queries.npz")):
        sys.exit(f"{source}: no per-query files (regenerate the results with this hashbench)")
    with tempfile.TemporaryDirectory(prefix="hashbench-bench-ci-") as tmp:
        plain, marked = Path(tmp) / "plain", Path(tmp) / "marked"
        shutil.copytree(source / "runs", plain / "runs")
        shutil.copytree(source / "runs", marked / "runs")
        strip_per_query(plain)
        cases = [
            ("table, no per-query files (baseline)", ["table", "--results-dir", str(plain), "--format", "md"]),
            ("table (marks)", ["table", "--results-dir", str(marked), "--format", "md"]),
            ("table --ci (marks, intervals)", ["table", "--results-dir", str(marked), "--format", "md", "--ci"]),
            ("table --ci, md + csv + latex", ["table", "--results-dir", str(marked), "--ci"]),
        ]
        results = [(name, wall(cmd, args.repeat)) for name, cmd in cases]
        with open(marked / "tables" / "map.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["source"] == "measured"]
    base = statistics.median(results[0][1])
    runs = len(list((source / "runs").glob("*.json")))
    cells, tested = len(rows), sum(r["mark"] in ("tie", "differs") for r in rows)
    print(f"{source}: {runs} records, map table: {cells} cells, {tested} paired tests; "
          f"median of {args.repeat} fresh processes each")
    print(f"{'command':<40} {'median':>8} {'min':>7} {'max':>7} {'/ baseline':>11}")
    for name, times in results:
        median = statistics.median(times)
        print(f"{name:<40} {median:7.2f}s {min(times):6.2f}s {max(times):6.2f}s {median / base:10.2f}x")


if __name__ == "__main__":
    main()
