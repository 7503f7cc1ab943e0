"""Benchmark the differentiable sorters: forward+backward time and peak memory against ``exact``.

Run:  python benchmarks/bench_sorters.py [--sizes 16,32,...,1024 --batch 64 --repeats 3 --device cpu]

For each list length n and each sorter (``hashbench list sorters``, default parameters), scores
(batch, n) ~ N(0, 1) go through ``P = sorter(scores)`` and the loss
``sum(w * (P @ scores))`` (w fixed, random) is backpropagated to the scores: that is one step.

* time: wall clock of one step (time.perf_counter; on CUDA after torch.cuda.synchronize), best
  of --repeats after one warm-up step;
* memory, CUDA: ``torch.cuda.max_memory_allocated`` during one step, minus what was allocated
  before it (the scores), i.e. the peak of the tensors the step creates;
* memory, CPU: the same quantity from torch.profiler's memory events (each allocation and free
  by torch's CPU allocator, in time order: the running maximum of their sum). tracemalloc and
  getrusage cannot measure it (torch allocates outside Python's allocator; ru_maxrss only grows).

``exact`` (hard forward, SoftSort straight-through backward) is the baseline: every other cell
gives its ratio to ``exact`` measured in the same run. The output P alone is batch * n^2 * 4
bytes (float32). A sorter whose step takes longer than --max-seconds at some n is skipped for the
larger n (the table says so). ``neuralsort-ref`` (on with --reference) is the authors'
formulation, ``A_s @ (1 1^T)``, O(n^3) per list, for comparison with hashbench's O(n^2) one.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # torch.profiler's start/stop chatter on stderr

import torch

import hashbench
from hashbench import registry as registry_module
from hashbench import sorters as sorters_module
from hashbench.errors import HashbenchError


def ensure_registered() -> None:
    """Use the sorters' entry point when installed, else register the module directly."""
    if "softsort" not in registry_module.registry("sorter"):
        registry_module.reload(extra_plugins={"hashbench.sorters": sorters_module})


class NeuralSortReference:
    """NeuralSort as written in the authors' code: B = A_s @ (1 1^T), an O(n^3) matmul."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.unsqueeze(-1)
        n = s.shape[1]
        one = torch.ones(n, 1, dtype=s.dtype, device=s.device)
        a = (s - s.transpose(1, 2)).abs()
        b = a @ (one @ one.T)
        scaling = (n + 1 - 2 * (torch.arange(n, device=s.device) + 1)).to(s.dtype)
        c = s @ scaling.unsqueeze(0)
        return ((c - b).transpose(1, 2) / self.temperature).softmax(-1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(sorter, scores: torch.Tensor, weights: torch.Tensor) -> None:
    scores.grad = None
    P = sorter(scores)
    (torch.bmm(P, scores.unsqueeze(-1)).squeeze(-1) * weights).sum().backward()


def time_step(sorter, scores, weights, repeats: int, device: torch.device) -> float:
    """Best wall seconds of one forward+backward over ``repeats``, after a warm-up."""
    step(sorter, scores, weights)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(sorter, scores, weights)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_bytes(sorter, scores, weights, device: torch.device) -> float:
    """Peak bytes allocated by torch during one step, above what was live before it."""
    scores.grad = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(sorter, scores, weights)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(sorter, scores, weights)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def cell(value: float | None, base: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    text = format(value, fmt)
    if base:
        text += f" ({value / base:.2f}x)"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32,64,128,256,512,1024", help="comma-separated list lengths n")
    ap.add_argument("--batch", type=int, default=64, help="lists per step (rows of scores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--sorters", help="comma-separated sorter names (default: all registered)")
    ap.add_argument("--max-seconds", type=float, default=2.0,
                    help="skip a sorter at larger n once one step takes longer than this")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also time neuralsort-ref, the authors' O(n^3) NeuralSort")
    ap.add_argument("--no-memory", action="store_true", help="time only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ensure_registered()
    device = torch.device(args.device)
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    names = args.sorters.split(",") if args.sorters else hashbench.names("sorter")
    if "exact" in names:
        names = ["exact"] + [n for n in names if n != "exact"]
    sorters: dict[str, object] = {}
    notes: list[str] = []
    for name in names:
        try:
            sorters[name] = hashbench.create("sorter", name)
        except HashbenchError as exc:
            notes.append(f"{name}: not run ({exc})")
    if args.reference:
        sorters["neuralsort-ref"] = NeuralSortReference()

    torch.manual_seed(args.seed)
    times: dict[tuple[str, int], float] = {}
    mems: dict[tuple[str, int], float] = {}
    stopped: dict[str, int] = {}
    for n in sizes:
        scores = torch.randn(args.batch, n, device=device, requires_grad=True)
        weights = torch.randn(args.batch, n, device=device)
        for name, sorter in sorters.items():
            if name in stopped:
                continue
            t = time_step(sorter, scores, weights, args.repeats, device)
            times[name, n] = t
            if not args.no_memory:
                mems[name, n] = peak_bytes(sorter, scores, weights, device)
            if t > args.max_seconds:
                stopped[name] = n
        del scores, weights
    for name, n in stopped.items():
        larger = [m for m in sizes if m > n]
        if larger:
            notes.append(f"{name}: skipped for n > {n} (one step took {times[name, n]:.1f} s > --max-seconds {args.max_seconds:g})")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    print(f"Differentiable sorters, forward+backward of sum(w * (P @ s)); batch {args.batch}, float32, "
          f"default parameters; best of {args.repeats}")
    print(f"device {device} ({where}); python {platform.python_version()}, torch {torch.__version__}")
    print()
    cols = list(sorters)
    base = "exact" if "exact" in sorters else None
    header = "| n | " + " | ".join(cols) + " |"
    rule = "|---:|" + "---:|" * len(cols)
    print("Time per step, ms (ratio to exact):")
    print()
    print(header)
    print(rule)
    for n in sizes:
        b = times.get((base, n)) if base else None
        print(f"| {n} | " + " | ".join(
            cell(times[c, n] * 1e3 if (c, n) in times else None, b * 1e3 if b and c != base else None, ".2f")
            for c in cols) + " |")
    if mems:
        what = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events"
        print()
        print(f"Peak memory of one step, MiB ({what}; ratio to exact); P alone is batch * n^2 * 4 bytes:")
        print()
        print("| n | P | " + " | ".join(cols) + " |")
        print("|---:|---:|" + "---:|" * len(cols))
        for n in sizes:
            b = mems.get((base, n)) if base else None
            p_mib = args.batch * n * n * 4 / 2**20
            print(f"| {n} | {p_mib:.2f} | " + " | ".join(
                cell(mems[c, n] / 2**20 if (c, n) in mems else None, b / 2**20 if b and c != base else None, ".2f")
                for c in cols) + " |")
    for note in notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    main()
