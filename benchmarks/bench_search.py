"""Benchmark one query against a fashion-mnist index: hashbench's encoder and search vs faiss.

Run:  python benchmarks/bench_search.py                   # builds (once) an ITQ 32-bit index, then measures
      python benchmarks/bench_search.py --bits 64         # another code length (16, 32 or 64)
      python benchmarks/bench_search.py --index db.hbi    # an existing index of fashion-mnist's database split

The index: ``--index PATH`` (``hashbench index RUN --split database`` of a fashion-mnist run,
default protocol: 69,000 items), or, without it, one built and kept in ``--work`` (default
``hashbench-bench-search`` in the system temp folder, reused by later invocations):
``hashbench run --methods itq --datasets fashion-mnist --bits B --seeds 0`` (ITQ on the default
tf_efficientnet_lite0 64 px features; the first time computes the backbone's features, a few
minutes) then ``hashbench index best:itq@B --split database``, each in a child process. The
count is checked: 69,000 items.

Queries are the protocol's query split (uint8 28x28 grey images), each also saved as PNG bytes
(untimed). One query at a time (a batch of 1), --warmup queries first, then --queries timed,
per query (wall clock, ``time.perf_counter_ns``):

- decode: the PNG bytes -> the encoder's input array (``hashbench.index.read_image``; checked
  equal to the grey array repeated to RGB, the input that is encoded);
- encode: the TorchScript encoder on that one image (``Index.encode``: the grey array);
- search hashbench: ``Index.search(code, k)`` (exact Hamming ranking, ties in item order);
- search faiss: ``faiss.IndexBinaryFlat(bits)`` holding the same ``index.codes``,
  ``.search(code, k)`` (the baseline of "vs faiss"; the two searches alternate which goes first);
- total: decode + encode + search, with either engine.

Printed: p50, p99 and mean in ms, and hashbench / faiss at p50 and p99. The main table runs
torch and faiss with 1 thread each (hashbench's search is numpy, one thread); a second table
uses the machine's default (torch.get_num_threads() at start-up) for both. Then a batched line
for context: --batch queries at once (encode, hashbench search, faiss search; median of 3,
queries per second). Checks: for every query, hashbench's and faiss's top-k distance lists must
be equal (the item ids may differ only within ties: also counted), and the single-image codes
are compared with the codes of the batched encoder. Without faiss (``hashbench[faiss]``) its
rows are skipped, with a note.

Measured results: README, Benchmarks.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = "fashion-mnist"
DATABASE_ITEMS = 69_000  # the default fashion-mnist protocol: all 70,000 images but the 1,000 queries


def queries(n: int) -> str:
    return f"{n:,} quer{'y' if n == 1 else 'ies'}"


def hashbench_cli(args: list[str]) -> None:
    """``hashbench ARGS`` in a child process (its threads and memory stay out of the timings)."""
    done = subprocess.run([sys.executable, "-m", "hashbench", *args], check=False)
    if done.returncode:
        sys.exit(f"bench_search: hashbench {' '.join(args)} failed (exit code {done.returncode})")


def build_index(work: Path, bits: int) -> tuple[Path, float]:
    """The ITQ index of fashion-mnist's database split in ``work`` (built when missing): (path,
    seconds spent building, 0 when reused)."""
    path = work / f"itq-{bits}b-{DATASET}-database.hbi"
    if path.exists():
        return path, 0.0
    results = work / "results"
    t0 = time.perf_counter()
    print(f"building {path}: hashbench run (ITQ, {bits} bits), then hashbench index (69,000 images)", flush=True)
    hashbench_cli(["run", "--methods", "itq", "--datasets", DATASET, "--bits", str(bits), "--seeds", "0",
                   "--results-dir", str(results), "--no-progress"])
    hashbench_cli(["index", f"best:itq@{bits}", "--split", "database", "--results-dir", str(results),
                   "--out", str(path), "--no-progress"])
    return path, time.perf_counter() - t0


def load_queries(index, count: int) -> np.ndarray:
    """The first ``count`` images of the index's protocol's query split, uint8 (count, H, W)."""
    from hashbench.runner import _load_splits

    source = index.manifest["source"]
    _, splits = _load_splits(source["dataset"], json.dumps(source["dataset_params"], sort_keys=True))
    x = np.asarray(splits.query.x)
    if len(x) < count:
        sys.exit(f"bench_search: the query split has {len(x):,} images, fewer than the {count:,} asked for")
    return x[:count]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def set_threads(n: int, faiss) -> None:
    import torch

    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)


def single_queries(index, faiss_index, images, pngs, warmup: int, k: int) -> dict:
    """Per-query stage times (ns) over images[warmup:], after the warm-up queries, and checks."""
    from hashbench.export import as_input
    from hashbench.index import read_image

    manifest = index.encoder_manifest
    stages = ("decode", "encode", "hashbench", "faiss")
    times = {s: [] for s in stages}
    out = {"codes": [], "same_distances": 0, "same_ids": 0, "tie_only_id_differences": 0, "decoded_equal": 0,
           "first_difference": None}
    for i, (image, data) in enumerate(zip(images, pngs)):
        t0 = time.perf_counter_ns()
        decoded = read_image(data, manifest)
        t1 = time.perf_counter_ns()
        code = index.encode([image])
        t2 = time.perf_counter_ns()
        if faiss_index is not None and i % 2:  # alternate which engine searches first
            f0 = time.perf_counter_ns()
            distances, ids = faiss_index.search(code, k)
            f1 = time.perf_counter_ns()
            hits = index.search(code, k=k)[0]
            h1 = time.perf_counter_ns()
            h0 = f1
        else:
            h0 = time.perf_counter_ns()
            hits = index.search(code, k=k)[0]
            h1 = time.perf_counter_ns()
            if faiss_index is not None:
                f0 = time.perf_counter_ns()
                distances, ids = faiss_index.search(code, k)
                f1 = time.perf_counter_ns()
        if i < warmup:
            continue
        times["decode"].append(t1 - t0)
        times["encode"].append(t2 - t1)
        times["hashbench"].append(h1 - h0)
        out["codes"].append(code[0])
        out["decoded_equal"] += bool(np.array_equal(decoded, as_input(image[None], manifest)[0]))
        if faiss_index is not None:
            times["faiss"].append(f1 - f0)
            ours_d, ours_i = [d for _, d in hits], [p for p, _ in hits]
            same_d = ours_d == distances[0].tolist()
            same_i = ours_i == ids[0].tolist()
            out["same_distances"] += same_d
            out["same_ids"] += same_i
            out["tie_only_id_differences"] += same_d and not same_i
            if not same_d and out["first_difference"] is None:
                out["first_difference"] = (i - warmup, ours_d, distances[0].tolist())
    out["times"] = {s: np.array(t, dtype=np.float64) / 1e6 for s, t in times.items() if t}  # ms
    out["codes"] = np.stack(out["codes"])
    return out


def median_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def batched(index, faiss_index, images, k: int, repeats: int = 3) -> dict:
    """Median seconds of encoding and of searching all ``images`` at once, and checks."""
    out = {}
    out["encode"], codes = median_of(repeats, lambda: index.encode(list(images)))
    out["hashbench"], hits = median_of(repeats, lambda: index.search(codes, k=k))
    out["codes"] = codes
    if faiss_index is not None:
        out["faiss"], (distances, ids) = median_of(repeats, lambda: faiss_index.search(codes, k))
        ours_d = np.array([[d for _, d in row] for row in hits])
        ours_i = np.array([[p for p, _ in row] for row in hits])
        out["same_distances"] = int((ours_d == distances).all(axis=1).sum())
        out["same_ids"] = int((ours_i == ids).all(axis=1).sum())
    return out


def print_single(label: str, got: dict, have_faiss: bool, k: int) -> None:
    t = got["times"]
    n = len(t["encode"])
    print(f"\n{label}")
    head = f"  {'':46s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}"
    print(head + (f" {'p50 vs faiss':>13s} {'p99 vs faiss':>13s}" if have_faiss else ""))
    rows = [("decode   PNG bytes -> array (read_image)", t["decode"], None),
            ("encode   TorchScript encoder, 1 image", t["encode"], None),
            (f"search   hashbench Index.search, k={k}", t["hashbench"], t.get("faiss")),
            ]
    if have_faiss:
        rows.append((f"search   faiss IndexBinaryFlat, k={k}", t["faiss"], t["faiss"]))
    total_ours = t["decode"] + t["encode"] + t["hashbench"]
    rows.append(("total    decode + encode + hashbench search", total_ours, None))
    if have_faiss:
        total_faiss = t["decode"] + t["encode"] + t["faiss"]
        rows[-1] = (rows[-1][0], total_ours, total_faiss)
        rows.append(("total    decode + encode + faiss search", total_faiss, total_faiss))
    for name, values, base in rows:
        p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
        line = f"  {name:46s} {p50:8.3f} {p99:8.3f} {values.mean():8.3f}"
        if base is not None:
            line += f" {p50 / np.percentile(base, 50):12.2f}x {p99 / np.percentile(base, 99):12.2f}x"
        print(line)
    print(f"  check: decoded PNG == grey repeated to RGB (the encoded input): {got['decoded_equal']}/{n}")
    if have_faiss:
        print(f"  check: top-{k} distances equal to faiss's: {got['same_distances']}/{n} queries"
              + ("" if got["first_difference"] is None else
                 f" (first difference, query {got['first_difference'][0]}: ours {got['first_difference'][1]}, "
                 f"faiss {got['first_difference'][2]})"))
        print(f"  check: top-{k} item ids equal to faiss's: {got['same_ids']}/{n} queries"
              f" ({got['tie_only_id_differences']} differ only in ids, within ties)")


def print_batched(label: str, got: dict, n: int, have_faiss: bool, k: int) -> None:
    print(f"\n{label}")
    print(f"  {'':46s} {'seconds':>8s} {'queries/s':>10s}" + (f" {'vs faiss':>9s}" if have_faiss else ""))
    rows = [("encode   TorchScript encoder", got["encode"], None),
            (f"search   hashbench Index.search, k={k}", got["hashbench"], got.get("faiss"))]
    if have_faiss:
        rows.append((f"search   faiss IndexBinaryFlat, k={k}", got["faiss"], got["faiss"]))
    for name, seconds, base in rows:
        line = f"  {name:46s} {seconds:8.3f} {n / seconds:10,.0f}"
        if base is not None:
            line += f" {seconds / base:8.2f}x"
        print(line)
    if have_faiss:
        print(f"  check: top-{k} distances equal to faiss's: {got['same_distances']}/{n} queries; "
              f"item ids equal: {got['same_ids']}/{n}")


def main() -> None:
    wall0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", help="an index of fashion-mnist's database split (default: build one in --work)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hashbench-bench-search"),
                    help="folder for the built index and its results (default: %(default)s; reused)")
    ap.add_argument("--bits", type=int, choices=(16, 32, 64), default=None,
                    help="code length of the built index (default 32; with --index: the index's)")
    ap.add_argument("--queries", type=int, default=200, help="timed single queries (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed single queries first (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1000, help="queries of the batched line (default: %(default)s)")
    ap.add_argument("-k", type=int, default=10, help="results per query (default: %(default)s)")
    args = ap.parse_args()

    from hashbench.cli import openmp_waiting

    openmp_waiting()  # torch's OpenMP threads wait as under `hashbench search` and `serve`
    build_seconds = 0.0
    if args.index:
        path = Path(args.index)
        how = "given (--index)"
    else:
        path, build_seconds = build_index(Path(args.work), args.bits or 32)
        how = (f"built now in {build_seconds:.0f} s" if build_seconds else "reused") + f" (--work {args.work})"

    import torch

    from hashbench.index import Index

    try:
        import faiss
    except ImportError:
        faiss = None
    index = Index.load(path)
    source = index.manifest["source"]
    if source.get("kind") != "split" or source.get("dataset") != DATASET or source.get("split") != "database":
        sys.exit(f"bench_search: {path} is an index of {source}, not of {DATASET}'s database split")
    assert len(index) == DATABASE_ITEMS, f"{path}: {len(index):,} items, not the protocol's {DATABASE_ITEMS:,}"
    if args.bits is not None and args.bits != index.bits:
        sys.exit(f"bench_search: {path} holds {index.bits}-bit codes, not --bits {args.bits}")
    have_faiss = faiss is not None and index.bits % 8 == 0
    run = index.manifest["run"]
    enc = index.encoder_manifest
    backbone = (enc.get("backbone") or {}).get("model", "raw pixels")
    default_torch = torch.get_num_threads()
    default_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          + (f"faiss {faiss.__version__}" if faiss is not None else "faiss not installed") + f", {os.cpu_count()} CPUs")
    print(f"index {path} ({how}): {len(index):,} items, {index.bits} bits, run {run['run_id']} "
          f"({run['label']}, mAP {run['map']:.4f}), encoder {backbone}")
    print(f"threads: torch.get_num_threads() {default_torch}"
          + (f", faiss.omp_get_max_threads() {default_faiss}" if faiss is not None else "")
          + f" (defaults); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
            f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")
    if faiss is None:
        print("faiss not installed (pip install 'hashbench[faiss]'): its columns are skipped")
    elif not have_faiss:
        print(f"faiss skipped: {index.bits} bits is not a whole number of bytes")

    images = load_queries(index, max(args.warmup + args.queries, args.batch))
    pngs = [png_bytes(im) for im in images[:args.warmup + args.queries]]
    faiss_index = None
    if have_faiss:
        faiss_index = faiss.IndexBinaryFlat(index.bits)
        faiss_index.add(np.ascontiguousarray(index.codes))

    settings = [1] + ([default_torch] if default_torch != 1 else [])
    single_codes = None
    for n in settings:
        set_threads(n, faiss if have_faiss else None)
        name = (f"{n} thread{'s' if n > 1 else ''} (torch {n}" + (f", faiss {n}" if have_faiss else "")
                + ("" if n == 1 else "; the defaults") + ")")
        got = single_queries(index, faiss_index, images[:args.warmup + args.queries], pngs, args.warmup, args.k)
        single_codes = got["codes"] if single_codes is None else single_codes
        print_single(f"one query at a time (batch of 1), {queries(args.queries)} after "
                     f"{args.warmup} warm-up; {name}", got, have_faiss, args.k)
    for n in settings:
        set_threads(n, faiss if have_faiss else None)
        name = "1 thread" if n == 1 else f"{n} threads"
        got = batched(index, faiss_index, images[:args.batch], args.k)
        print_batched(f"{queries(args.batch)} at once (median of 3); {name}", got, args.batch,
                      have_faiss, args.k)
        timed = slice(args.warmup, args.warmup + args.queries)
        same = (got["codes"][timed] == single_codes).all(axis=1)
        print(f"  check: codes of single-image encoding == batched encoding: {int(same.sum())}/{len(same)} queries")
    print(f"\nwall time {time.perf_counter() - wall0:.0f} s" + (f" (of which building the index {build_seconds:.0f} s)"
                                                           if build_seconds else ""))


if __name__ == "__main__":
    main()
