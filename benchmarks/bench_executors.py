"""Benchmark the executors on one grid: local, local --jobs 2, ray, slurm (submitit, cluster=local).

Run:  python benchmarks/bench_executors.py [--methods lsh,itq --datasets digits --bits 16,32 --seeds 0,1]

Each executor runs the same grid with ``hashbench run`` in a fresh process, into its own temporary
results folder, so every wall time includes start-up (Python, plugins, Ray's start, worker
processes). Prints each wall time and its ratio to the sequential local executor, measured in the
same invocation, and checks that the records' metrics and curves are identical across executors.

BLAS threads: where OMP_NUM_THREADS is unset, Ray sets it to each task's CPUs (1 here), and a
different BLAS thread count changes the summation order, which can flip a few code bits (ITQ at 64
bits on digits then moves mAP in the 5th digit). So every executor runs with the same
OMP_NUM_THREADS (--threads, default 1). Records that differ are reported with the largest mAP gap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HASHBENCH = str(Path(sys.executable).with_name("hashbench"))


def outcomes(results: Path) -> dict[str, tuple]:
    out = {}
    for path in (results / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        out[rec["run_id"]] = (rec["status"], rec.get("metrics"), rec.get("curves"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="lsh,itq")
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--bits", default="16,32")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of local --jobs, Ray CPUs, local jobs at once")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every executor (Ray's tasks: 1)")
    args = parser.parse_args()

    grid = ["--methods", args.methods, "--datasets", args.datasets, "--bits", args.bits, "--seeds", args.seeds,
            "--no-progress", "--no-table"]
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        tmp_path = Path(tmp)
        # the executor files extend the default experiment (its backbone and input size), so that
        # every executor runs exactly the grid of the flags above
        from hashbench.config import DEFAULT_EXPERIMENT

        base = Path(DEFAULT_EXPERIMENT).read_text() + "\n"
        ray_exp = tmp_path / "ray.yaml"
        ray_exp.write_text(base + f"executor: ray\nexecutor_params: {{num_cpus: {args.jobs}}}\n")
        slurm_exp = tmp_path / "slurm.yaml"
        slurm_exp.write_text(base + f"executor: slurm\nexecutor_params: {{cluster: local, array_parallelism: {args.jobs}, "
                             "poll_s: 0.2}\n")
        executors = {
            "local": [],
            f"local --jobs {args.jobs}": ["--jobs", str(args.jobs)],
            "ray": ["-c", str(ray_exp)],
            "slurm (cluster=local)": ["-c", str(slurm_exp)],
        }
        env = {k: v for k, v in os.environ.items() if k != "HASHBENCH_PLUGINS"}
        env.setdefault("HASHBENCH_CACHE", str(tmp_path / "cache"))
        env["OMP_NUM_THREADS"] = str(args.threads)
        times: dict[str, float] = {}
        results: dict[str, dict] = {}
        for label, flags in executors.items():
            folder = tmp_path / f"results-{len(times)}"
            t0 = time.perf_counter()
            run = subprocess.run([HASHBENCH, "run", *grid, *flags, "--results-dir", str(folder)],
                                 check=False, env=env, cwd=tmp_path, capture_output=True, text=True)
            times[label] = time.perf_counter() - t0
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                raise SystemExit(f"{label}: hashbench run exited with {run.returncode}")
            results[label] = outcomes(folder)

        reference = results["local"]
        runs = len(reference)
        assert runs and all(status == "done" for status, *_ in reference.values()), "the local grid did not finish"
        differ = {}
        for label, got in results.items():
            assert got.keys() == reference.keys(), f"{label}: not the same runs"
            changed = [k for k in got if got[k] != reference[k]]
            if changed:
                differ[label] = (len(changed), max(abs(got[k][1]["map"] - reference[k][1]["map"]) for k in changed))

    print(f"grid: {args.methods} x {args.datasets} x bits {args.bits} x seeds {args.seeds} = {runs} runs; "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads}, Python {platform.python_version()}")
    if not differ:
        print(f"metrics and curves identical across {len(results)} executors")
    for label, (n, delta) in differ.items():
        print(f"{label}: {n} of {runs} records differ from local's, max |delta mAP| = {delta:.2e}")
    print(f"{'executor':<24} {'wall s':>8} {'vs local':>9}")
    for label, seconds in times.items():
        print(f"{label:<24} {seconds:8.2f} {seconds / times['local']:8.2f}x")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
