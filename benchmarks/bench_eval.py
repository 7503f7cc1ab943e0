"""Benchmark mAP@K: hashbench.evaluate.map_at_k vs faiss search vs a DeepHash-style numpy loop.

Run:  python benchmarks/bench_eval.py [--queries 1000 --database 100000 --bits 64 --topk 1000]

Random codes, labels with --classes classes (single-label). All timings are taken in this
process, best of --repeats, wall clock (time.perf_counter). faiss is timed for the top-K search
only (no mAP); the loop is timed on --loop-queries queries and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from hashbench.evaluate import evaluate, map_at_k, pack_codes


def best_of(repeats: int, fn):
    """(best wall seconds over repeats, last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--database", type=int, default=100_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--topk", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--loop-queries", type=int, default=50, help="queries timed for the numpy loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    nq, ndb, nbits, k = args.queries, args.database, args.bits, args.topk
    q_bits = rng.random((nq, nbits)) < 0.5
    db_bits = rng.random((ndb, nbits)) < 0.5
    ql = rng.integers(0, args.classes, nq)
    dl = rng.integers(0, args.classes, ndb)
    qp, dp = pack_codes(q_bits), pack_codes(db_bits)

    print(f"mAP@{k}: {nq} queries x {ndb} database items, {nbits}-bit random codes, "
          f"{args.classes} classes; best of {args.repeats}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs")

    t_ours, m_ours = best_of(args.repeats, lambda: map_at_k(qp, dp, ql, dl, bits=nbits, topk=k))
    print(f"  hashbench map_at_k          {t_ours:8.3f} s   mAP@{k} = {m_ours:.6f}")

    t_faiss = None
    try:
        import faiss
    except ImportError:
        print("  faiss IndexBinaryFlat        (faiss not installed: skipped)")
    else:
        if nbits % 8:
            print(f"  faiss IndexBinaryFlat        (skipped: faiss needs bits % 8 == 0, got {nbits})")
        else:
            index = faiss.IndexBinaryFlat(nbits)
            index.add(dp)
            t_faiss, _ = best_of(args.repeats, lambda: index.search(qp, k))
            print(f"  faiss IndexBinaryFlat k={k}  {t_faiss:8.3f} s   (search only, no mAP; "
                  f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads)")

    nl = min(args.loop_queries, nq)
    q_pm1 = np.where(q_bits[:nl], 1.0, -1.0).astype(np.float32)
    db_pm1 = np.where(db_bits, 1.0, -1.0).astype(np.float32)
    q_onehot = np.eye(args.classes, dtype=np.float32)[ql[:nl]]
    db_onehot = np.eye(args.classes, dtype=np.float32)[dl]
    t_loop_sub, m_loop = best_of(args.repeats, lambda: deephash_loop_map(q_pm1, db_pm1, q_onehot, db_onehot, k))
    t_loop = t_loop_sub * nq / nl
    print(f"  DeepHash-style numpy loop    {t_loop:8.3f} s   (measured {t_loop_sub:.3f} s on {nl} "
          f"queries, extrapolated x{nq / nl:g}; stable argsort)")

    t_eval, res = best_of(args.repeats, lambda: evaluate(qp, dp, ql, dl, bits=nbits, topk=k))
    print(f"  hashbench evaluate (all)     {t_eval:8.3f} s   map {res['map']:.6f}, map_full "
          f"{res['map_full']:.6f}, map_tie_aware {res['map_tie_aware']:.6f}")

    print("ratios:")
    if t_faiss is not None:
        print(f"  ours / faiss search          {t_ours / t_faiss:8.2f}")
    print(f"  loop / ours                  {t_loop / t_ours:8.1f}")
    print(f"  evaluate / map_at_k          {t_eval / t_ours:8.1f}")

    m_sub = map_at_k(qp[:nl], dp, ql[:nl], dl, bits=nbits, topk=k)
    diff = abs(m_sub - m_loop)
    print(f"check on the {nl}-query subset: ours {m_sub:.12f}  loop {m_loop:.12f}  |diff| {diff:.1e} "
          f"-> {'AGREE' if diff <= 1e-12 else 'DIFFER'}")
    if res["map"] != m_ours:
        print(f"WARNING: evaluate()['map'] {res['map']!r} != map_at_k {m_ours!r}")


if __name__ == "__main__":
    main()
