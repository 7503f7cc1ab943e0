"""Benchmark the view bank: CIBHash trained on the bank vs the unbanked loop, same epochs.

Run:  python benchmarks/bench_bank.py [--epochs 3 --bits 32 --train-per-class 500 --bank-views 8]

The default protocol (fashion-mnist: 5,000 train, 1,000 val, 1,000 queries, 69,000 database;
frozen tf_efficientnet_lite0 at 64 px). Both loops train CIBHash with the same config except
``bank_views`` (8 vs 0), validate once (at the last epoch) and are scored by mAP@1000 of the
queries against the database (hashbench.evaluate). The unbanked loop augments and runs the
backbone on 2 x N images per epoch, hence the few epochs by default.

Timings (wall clock, this process): ``bank build`` = computing the view bank (a cold cache;
later runs of any seed or method read it from disk); ``fit`` = training on the bank / on fresh
augmentations, validation included; ``encode`` = codes of queries and database. The clean
(unaugmented) features of every split, which both loops use for validation and encoding, are
computed once before either loop and timed apart. ``--cache DIR`` sets HASHBENCH_CACHE (default: a fresh
temporary folder, removed at exit, so the bank build is measured).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

# two torch threads on a shared 2-core machine spin-wait badly when another process holds a core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank-views", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=500, help="subset of the 500/class train split")
    parser.add_argument("--database", type=int, default=0, help="subset of the database (0 = all 69,000)")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                        help="extra CIBHash parameter for both loops, e.g. --set stochastic=false")
    parser.add_argument("--cache", default=None, help="HASHBENCH_CACHE (default: a temporary folder, removed at exit)")
    args = parser.parse_args(argv)
    if args.cache is None:
        scratch = tempfile.TemporaryDirectory(prefix="bench-bank-")  # removed at exit
        os.environ["HASHBENCH_CACHE"] = scratch.name
    else:
        os.environ["HASHBENCH_CACHE"] = args.cache

    import torch

    import hashbench
    from hashbench.components import Split
    from hashbench.config import parse_set
    from hashbench.evaluate import map_at_k, pack_codes

    extra = {k.split(".", 1)[1]: v for k, v in parse_set([f"cibhash.{s}" for s in args.set]).items()}
    protocol = hashbench.create("dataset", "fashion-mnist")
    splits = protocol.load()
    train, val, query, database = splits.train, splits.val, splits.query, splits.database
    if args.train_per_class < 500:
        keep = np.concatenate([np.flatnonzero(train.labels == c)[:args.train_per_class] for c in range(10)])
        keep.sort()
        train = Split(x=train.x[keep], labels=train.labels[keep], index=train.index[keep])
    if args.database:
        keep = np.random.default_rng(0).choice(len(database), args.database, replace=False)
        keep.sort()
        database = Split(x=database.x[keep], labels=database.labels[keep], index=database.index[keep])
    print(f"# bench_bank: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
          f"cuda {torch.cuda.is_available()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"# fashion-mnist: train {len(train)}, val {len(val)}, query {len(query)}, database {len(database)}; "
          f"cibhash {args.bits} bits, {args.epochs} epochs, seed {args.seed}, extra {extra or '{}'}")

    from hashbench import banks

    def make(bank_views: int):
        return hashbench.create("method", "cibhash", bits=args.bits, seed=args.seed, epochs=args.epochs,
                                bank_views=bank_views, val_every=args.epochs, **extra)

    # clean features (validation, encode) are the same for both loops: computed once, up front
    cfg = make(0).config
    backbone = hashbench.create("backbone", cfg.backbone, pretrained=cfg.pretrained,
                                input_size=cfg.input_size, frozen=True)
    t0 = time.perf_counter()
    for split in (train, val, query, database):
        banks.clean_features(backbone, split.x)
    print(f"# clean features of all splits (shared by both loops): {time.perf_counter() - t0:.1f} s")

    def run(bank_views: int) -> dict:
        method = make(bank_views)
        out: dict = {}
        if bank_views:  # build the bank first, to time it apart from training
            t0 = time.perf_counter()
            _, info = banks.view_bank(backbone, train.x, method.config.augment, bank_views)
            out["bank_s"] = time.perf_counter() - t0
            out["bank_hit"] = info["cache_hit"]
        t0 = time.perf_counter()
        method.fit(train, val)
        out["fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        q, db = method.encode(query.x), method.encode(database.x)
        out["encode_s"] = time.perf_counter() - t0
        out["map"] = map_at_k(pack_codes(q), pack_codes(db), query.labels, database.labels,
                              bits=args.bits, topk=protocol.topk)
        log = method.report()
        out["val_map"] = log["best_val_map"]
        out["epoch_s"] = [round(e["seconds"], 2) for e in log["epochs"]]
        out["terms"] = log["epochs"][-1]["terms"]
        return out

    banked = run(args.bank_views)
    unbanked = run(0)
    print(f"{'loop':<10} {'bank build s':>12} {'fit s':>8} {'s/epoch':>8} {'encode s':>9} {'val mAP':>8} "
          f"{'mAP@1000':>9}  last-epoch terms")
    for name, r in (("banked", banked), ("unbanked", unbanked)):
        build = f"{r['bank_s']:.1f}" + ("" if not r.get("bank_hit") else " (hit)") if "bank_s" in r else "-"
        terms = ", ".join(f"{k}={v:.4f}" for k, v in r["terms"].items())
        print(f"{name:<10} {build:>12} {r['fit_s']:>8.1f} {np.mean(r['epoch_s']):>8.2f} {r['encode_s']:>9.1f} "
              f"{r['val_map']:>8.4f} {r['map']:>9.4f}  {terms}")
    print(f"speed-up of training (fit): {unbanked['fit_s'] / banked['fit_s']:.1f}x; "
          f"bank build + fit vs unbanked fit: {unbanked['fit_s'] / (banked['bank_s'] + banked['fit_s']):.2f}x "
          f"(the bank is built once per backbone/recipe, shared by every seed and method)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
