"""Benchmark evaluation: hashbench.evaluate (each engine) vs faiss search vs a DeepHash-style loop.

Run:  python benchmarks/bench_eval.py            # 1,000 x 100,000 and 10,000 x 1,000,000 (~6 min)
      python benchmarks/bench_eval.py --cases 1000x100000 --engines numba    # the small case (~15 s)
      python benchmarks/bench_eval.py --cases 1000x69000 --cold-cache        # a default-grid run's evaluation
      python benchmarks/bench_eval.py --threads 1    # one thread for faiss and numba (a loaded machine)

Each case (queries x database items, random --bits codes, --classes single-label classes, mAP@K
with K = --topk) is measured in fresh processes, one per row of its table, so that each row's
peak RSS is its own (VmHWM of that process: Python, numpy and the case's data included; "data"
is the same process's peak before the timed work). Timings are wall clock, best of --repeats
(default 3; 1 for cases above 10^9 pairs); "first" is the first call in its process (numba:
importing it and loading the cached kernels; with --cold-cache, compiling them into an empty
NUMBA_CACHE_DIR). faiss and the numba engine use every CPU, or OMP_NUM_THREADS (--threads).
Rows:

- faiss ``IndexBinaryFlat`` search of the top K (search only, no mAP), the baseline of "vs faiss";
- ``hashbench.evaluate.map_at_k`` and ``evaluate`` (every metric and curve) on each engine:
  numba (compiled kernels) and numpy (``engine="numpy"``, one thread), which must give identical
  numbers (checked: every metric and curve, to the last bit);
- the DeepHash-pytorch CalcTopMap loop (stable argsort), timed on --loop-queries queries and
  extrapolated linearly; its mAP on those queries is checked against ours.

Measured results: README, Benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def best_of(repeats: int, fn):
    """(best wall seconds over repeats, first call's seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times[0], out


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def peak_rss_mb() -> float:
    """This process's peak resident set, MiB: VmHWM on Linux (ru_maxrss there also counts the
    parent's pages at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


def make_case(nq: int, ndb: int, nbits: int, classes: int, seed: int):
    """Packed random codes (padding bits zero) and class labels; little memory beyond them."""
    from hashbench.evaluate import pack_codes

    rng = np.random.default_rng(seed)
    width = (nbits + 7) // 8
    qp = rng.integers(0, 256, (nq, width), dtype=np.uint8)
    dp = rng.integers(0, 256, (ndb, width), dtype=np.uint8)
    if nbits % 8:
        keep = np.uint8((0xFF << (8 - nbits % 8)) & 0xFF)
        qp[:, -1] &= keep
        dp[:, -1] &= keep
    assert pack_codes(np.unpackbits(qp[:2], axis=1, count=nbits).astype(bool)).tobytes() == qp[:2].tobytes()
    return qp, dp, rng.integers(0, classes, nq), rng.integers(0, classes, ndb)


def deephash_loop_map(q_pm1, db_pm1, q_onehot, db_onehot, topk, kind="stable"):
    """CalcTopMap of DeepHash-pytorch, per query, on {-1,+1} float codes and one-hot labels.

    The original calls np.argsort with the default (quicksort) kind, whose tie order is
    arbitrary; kind="stable" orders ties by database index, as hashbench and faiss do."""
    nbits = q_pm1.shape[1]
    total = 0.0
    for i in range(len(q_pm1)):
        gnd = (db_onehot @ q_onehot[i] > 0).astype(np.float32)
        hamm = 0.5 * (nbits - db_pm1 @ q_pm1[i])
        ind = np.argsort(hamm, kind=kind)
        tgnd = gnd[ind][:topk]
        tsum = int(tgnd.sum())
        if tsum == 0:
            continue  # contributes 0 but still counts in the mean below
        count = np.linspace(1, tsum, tsum)
        tindex = np.flatnonzero(tgnd == 1) + 1.0
        total += float(np.mean(count / tindex))
    return total / len(q_pm1)


# ----------------------------------------------------------------------------- one row, in a child


def child(args) -> dict:
    nq, ndb = args.case
    qp, dp, ql, dl = make_case(nq, ndb, args.bits, args.classes, args.seed)
    k, what = args.topk, args.child
    out = {"data_mb": peak_rss_mb()}
    if what == "faiss":
        import faiss

        index = faiss.IndexBinaryFlat(args.bits)
        index.add(dp)
        out["seconds"], out["first"], _ = best_of(args.repeats, lambda: index.search(qp, k))
        out["info"] = f"faiss {faiss.__version__}, {plural(faiss.omp_get_max_threads(), 'thread')}"
    elif what == "loop":
        from hashbench.evaluate import map_at_k

        nl = min(args.loop_queries, nq)
        bits_q = np.unpackbits(qp[:nl], axis=1, count=args.bits).astype(bool)
        bits_db = np.unpackbits(dp, axis=1, count=args.bits).astype(bool)
        q_pm1 = np.where(bits_q, 1.0, -1.0).astype(np.float32)
        db_pm1 = np.where(bits_db, 1.0, -1.0).astype(np.float32)
        del bits_db
        eye = np.eye(args.classes, dtype=np.float32)
        sub, _, m_loop = best_of(args.repeats, lambda: deephash_loop_map(q_pm1, db_pm1, eye[ql[:nl]], eye[dl], k))
        out.update(seconds=sub * nq / nl, first=None, loop_queries=nl, loop_map=m_loop,
                   ours_map=map_at_k(qp[:nl], dp, ql[:nl], dl, bits=args.bits, topk=k))
    else:
        import hashbench.evaluate as ev

        engine = what.split(":")[1]
        fn = ev.map_at_k if what.startswith("map") else ev.evaluate
        out["seconds"], out["first"], res = best_of(
            args.repeats, lambda: fn(qp, dp, ql, dl, bits=args.bits, topk=k, engine=engine))
        out["result"] = res
        if engine == "numba":
            out["info"] = plural(ev._threads(), "thread")
    out["peak_mb"] = peak_rss_mb()
    return out


# ----------------------------------------------------------------------------- the driver


def run_child(args, case, what: str, repeats: int, env: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--cases", f"{case[0]}x{case[1]}",
           "--bits", str(args.bits), "--topk", str(args.topk), "--repeats", str(repeats),
           "--classes", str(args.classes), "--loop-queries", str(args.loop_queries), "--seed", str(args.seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_case(text: str) -> tuple[int, int]:
    nq, _, ndb = text.lower().partition("x")
    return int(nq.replace("_", "")), int(ndb.replace("_", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1000x100000,10000x1000000",
                    help="comma-separated QUERIESxDATABASE cases (default: %(default)s)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--topk", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=None,
                    help="best of N (default 3; 1 for cases above 10^9 pairs)")
    ap.add_argument("--engines", default="numba,numpy", help="hashbench engines to time (default: %(default)s)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--loop-queries", type=int, default=50, help="queries timed for the loop (0: no loop)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every row (faiss and the numba engine; default: all CPUs)")
    ap.add_argument("--cold-cache", action="store_true",
                    help="numba rows compile their kernels into an empty NUMBA_CACHE_DIR (first = cold compile)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        args.case = parse_case(args.cases)
        print(json.dumps(child(args)))
        return

    from hashbench.evaluate import eval_engine

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "numba" in engines and eval_engine("auto") != "numba":
        print("numba not installed (pip install 'hashbench[fast]'): its rows are skipped")
        engines.remove("numba")
    try:
        import faiss  # noqa: F401
        have_faiss = args.bits % 8 == 0
    except ImportError:
        have_faiss = False
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"{args.bits}-bit random codes, {args.classes} classes, mAP@{args.topk}"
          + ("" if have_faiss else "; faiss skipped (not installed, or bits % 8 != 0)"))

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cache = tempfile.TemporaryDirectory(prefix="bench-eval-numba-") if args.cold_cache else None
    for case in map(parse_case, args.cases.split(",")):
        nq, ndb = case
        repeats = args.repeats or (3 if nq * ndb <= 10**9 else 1)
        rows = (["faiss"] if have_faiss else []) + [f"{f}:{e}" for e in engines for f in ("map", "evaluate")]
        rows += ["loop"] if args.loop_queries > 0 else []
        print(f"\n{nq:,} queries x {ndb:,} database items; best of {repeats}, a fresh process per row")
        print(f"  {'':34s} {'seconds':>9s} {'vs faiss':>9s} {'first':>8s} {'peak RSS':>9s} {'data':>7s}")
        got = {}
        for what in rows:
            row_env = env
            if cache is not None and what.endswith(":numba"):  # each numba row compiles afresh
                row_env = {**env, "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=cache.name)}
            got[what] = r = run_child(args, case, what, repeats, row_env)
            if what == "faiss":
                label = f"faiss IndexBinaryFlat search k={args.topk}"
            elif what == "loop":
                label = "DeepHash-style numpy loop"
            else:
                function, engine = what.split(":")
                label = f"hashbench {'map_at_k' if function == 'map' else 'evaluate'} [{engine}]"
            if "error" in r:
                print(f"  {label:34s} failed: {r['error']}")
                continue
            base = got.get("faiss", {}).get("seconds")
            ratio = f"{r['seconds'] / base:8.2f}x" if base else f"{'':9s}"
            first = f"{r['first']:8.3f}" if r.get("first") is not None else f"{'':8s}"
            note = r.get("info", "")
            if what == "loop":
                note = f"{r['loop_queries']} queries, extrapolated x{nq / r['loop_queries']:g}"
            print(f"  {label:34s} {r['seconds']:9.3f} {ratio} {first} {r['peak_mb']:7.0f} MB {r['data_mb']:4.0f} MB"
                  + (f"   ({note})" if note else ""))
        checks = []
        results = {w: r["result"] for w, r in got.items() if "result" in r}
        for e in engines:
            m, full = results.get(f"map:{e}"), results.get(f"evaluate:{e}")
            if m is not None and full is not None:
                checks.append(f"map_at_k == evaluate['map'] [{e}]: {'yes' if m == full['map'] else 'NO'}")
        if "evaluate:numba" in results and "evaluate:numpy" in results:
            a, b = ({k: v for k, v in results[f"evaluate:{e}"].items() if k != "engine"} for e in ("numba", "numpy"))
            checks.append(f"numba == numpy, every metric and curve: {'EQUAL' if a == b else 'DIFFER'}")
        if "map:numba" in results and "map:numpy" in results:
            same = results["map:numba"] == results["map:numpy"]
            checks.append(f"map_at_k numba == numpy: {'EQUAL' if same else 'DIFFER'}")
        if "loop_map" in got.get("loop", {}):
            diff = abs(got["loop"]["ours_map"] - got["loop"]["loop_map"])
            checks.append(f"loop vs ours on {got['loop']['loop_queries']} queries: |diff| {diff:.1e} "
                          f"{'AGREE' if diff <= 1e-12 else 'DIFFER'}")
        any_eval = next((r for w, r in results.items() if w.startswith("evaluate")), None)
        if any_eval is not None:
            print(f"  mAP@{args.topk} {any_eval['map']:.6f}, map_full {any_eval['map_full']:.6f}, "
                  f"map_tie_aware {any_eval['map_tie_aware']:.6f}")
        for line in checks:
            print(f"  check: {line}")
    if cache is not None:
        cache.cleanup()


if __name__ == "__main__":
    main()
