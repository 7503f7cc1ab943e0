"""The evaluation engine: Hamming ranking of packed binary codes and the retrieval metrics.

Codes travel packed: ``pack_codes`` turns an (N, bits) code matrix into (N, ceil(bits/8)) uint8
(``np.packbits`` order, zero padding bits). Distances are computed as popcount(XOR) over uint64
words (bytes zero-padded to whole words), in chunks of queries, so memory is bounded.

Ranking: by Hamming distance, ties by database index (a stable sort; what faiss
``IndexBinaryFlat`` returns). ``map``, ``map_full`` and ``precision_at_k`` use that ranking;
``map_tie_aware`` is the exact expectation of ``map_full`` over uniformly random tie orders.

Relevance: 1-D integer labels are class ids (relevant = same class); 2-D multi-hot {0,1} labels
are multi-label (relevant = at least one shared label).

Average precision is summed in rank order, left to right (``hits += 1; s += hits / rank`` at each
relevant item, float64), as a per-query loop would; every other metric is a ratio of counts.

Two engines compute the same numbers, bit for bit (the tests hold them to it):

- ``numba`` (``pip install 'hashbench[fast]'``): compiled kernels in
  :mod:`hashbench._evaluate_numba`, no sort at all: per query one pass for the distances and their
  histogram (bits + 1 buckets), a counting sort of the relevance into rank order by (distance,
  index), one pass in rank order (``map_at_k`` with K << ndb: only the items within a sampled
  top-K cutoff are kept and sorted); queries in parallel on threads. Compiled once per machine
  (cached on disk: ~2 s per kernel and distance dtype the first time, then loaded).
- ``numpy``: a stable sort per query (``evaluate``) or of the candidates within the top-K
  cutoff (``map_at_k``), numpy only, one thread.

The engine is the ``engine`` argument, else ``$HASHBENCH_EVAL_ENGINE``, else ``auto`` (numba when
it imports, else numpy); ``evaluate`` reports the one that ran under ``"engine"``. The numba
engine uses the CPUs this process may run on, at most ``$OMP_NUM_THREADS`` when that is set.

numpy only at import (no torch, no faiss; numba only when its engine runs).
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import HashbenchError

__all__ = ["ENGINE_ENV", "binarize", "check_bits", "eval_engine", "evaluate", "hamming_distances",
           "map_at_k", "pack_codes", "unpack_codes"]

MAX_BITS = 1024
DEFAULT_CHUNK_BYTES = 64 << 20
# Bytes of working memory per (query, database item) cell of a query chunk; see evaluate().
_CELL_BYTES = 24
_MAX_CHUNK_ROWS = 4096
_COL_BLOCK = 8192  # database columns per XOR/popcount block (keeps the uint64 temporary small)
_SAMPLE_COLS = 4096  # database columns sampled to estimate the top-K cutoff distance
ENGINE_ENV = "HASHBENCH_EVAL_ENGINE"
ENGINES = ("auto", "numba", "numpy")
_NUMBA_BLOCK_ROWS = 32  # queries per numba block at most: they share each tile of database words
_NUMBA_BLOCK_BYTES = 4 << 20  # and their distance rows at most this (re-read from cache per query)
_NUMBA_TILE_BYTES = 128 << 10  # database words per tile (stays in the L2 cache)
_CANDIDATES_PER_K = 8  # numba map_at_k, sampled mode: room for this many candidates per K


# --------------------------------------------------------------------------------------------
# engines


@functools.cache
def _numba_kernels():
    """The compiled-kernel module, or the reason it cannot be used (a string)."""
    try:
        from . import _evaluate_numba as kernels
    except Exception as exc:  # noqa: BLE001 - numba present but broken: the numpy engine runs
        return f"{type(exc).__name__}: {exc}"
    if not kernels.AVAILABLE:
        return str(kernels.IMPORT_ERROR)
    return kernels


def eval_engine(engine: str | None = None) -> str:
    """The engine that ``evaluate``/``map_at_k`` run with: ``"numba"`` or ``"numpy"``.

    ``engine``: ``"auto"`` (numba when it imports, else numpy), ``"numba"`` (an error when it is
    not installed) or ``"numpy"``; None reads ``$HASHBENCH_EVAL_ENGINE`` (unset or empty: auto).
    Both engines give identical results; see the module docstring.
    """
    choice = engine if engine is not None else (os.environ.get(ENGINE_ENV) or "auto")
    name = choice.strip().lower() if isinstance(choice, str) else choice
    if name not in ENGINES:
        where = "engine" if engine is not None else f"${ENGINE_ENV}"
        raise HashbenchError(f"{where} must be one of {', '.join(ENGINES)}, got {choice!r}")
    if name == "numpy":
        return "numpy"
    kernels = _numba_kernels()
    if not isinstance(kernels, str):
        return "numba"
    if name == "numba":
        raise HashbenchError(f"the numba engine needs numba: pip install 'hashbench[fast]' ({kernels})")
    return "numpy"


def _threads() -> int:
    """Threads of the numba engine: the CPUs this process may use, at most $OMP_NUM_THREADS."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        n = min(n, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    return max(1, n)


# --------------------------------------------------------------------------------------------
# codes


def binarize(codes) -> np.ndarray:
    """Return codes as a bool (N, bits) matrix.

    bool input is returned as is; a numeric array whose values are all in {0, 1} is read as bits
    (1 -> True); any other numeric array is thresholded ``value >= 0 -> True`` (sign codes
    {-1, +1}, relaxed real codes; 0 -> True, never a fractional distance). 2-D only.
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        raise HashbenchError(f"codes must be a 2-D (items, bits) array, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise HashbenchError(f"codes must be bool, integer or float, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise HashbenchError("codes contain NaN or infinity; fix the encoder output before binarizing")
    if ((a == 0) | (a == 1)).all():
        return a == 1
    return a >= 0


def pack_codes(codes) -> np.ndarray:
    """Binarize and pack codes: (N, bits) -> uint8 (N, ceil(bits/8)), ``np.packbits(..., axis=1)``."""
    return np.packbits(binarize(codes), axis=1)


def unpack_codes(packed, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: uint8 (N, ceil(bits/8)) -> bool (N, bits)."""
    bits = check_bits(bits)
    packed = _check_packed(packed, "packed codes", bits)
    return np.unpackbits(packed, axis=1, count=bits).view(np.bool_)


def hamming_distances(query_packed, db_packed) -> np.ndarray:
    """Exact Hamming distances between packed codes: (nq, W) x (ndb, W) uint8 -> (nq, ndb).

    dtype uint8 when 8*W <= 255, else uint16. Counts every bit of the W bytes (padding bits of
    ``pack_codes`` output are zero, so they add nothing). Many calls against one database:
    :class:`HammingDatabase` prepares it once.
    """
    return HammingDatabase(db_packed).distances(query_packed)


class HammingDatabase:
    """Packed database codes uint8 (ndb, W) laid out once (64-bit words, word-major) for many
    :meth:`distances` calls (a search index; :func:`hamming_distances` makes one per call)."""

    def __init__(self, db_packed) -> None:
        db = _check_packed(db_packed, "database codes")
        self.size, self.width = db.shape
        self._words = np.ascontiguousarray(_to_words(db).T)

    def distances(self, query_packed) -> np.ndarray:
        """(nq, ndb) distances of packed query codes uint8 (nq, W) (see :func:`hamming_distances`)."""
        q = _check_packed(query_packed, "query codes")
        if q.shape[1] != self.width:
            raise HashbenchError(
                f"query codes are {q.shape[1]} bytes wide but database codes {self.width}; "
                "pack both with the same bit count"
            )
        qw, dbw = _to_words(q), self._words
        out = np.empty((q.shape[0], self.size), _dist_dtype(8 * self.width))
        if q.shape[0] and self.size:
            step = max(1, min(_MAX_CHUNK_ROWS, DEFAULT_CHUNK_BYTES // (16 * self.size)))
            buf = np.empty((min(step, q.shape[0]), min(_COL_BLOCK, self.size)), np.uint64)
            for q0 in range(0, q.shape[0], step):
                _distance_block(qw[q0:q0 + step], dbw, out[q0:q0 + step], buf)
        return out


# --------------------------------------------------------------------------------------------
# validation helpers


def check_bits(bits) -> int:
    """Return ``bits`` as an int in [1, MAX_BITS] or raise a one-line HashbenchError."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise HashbenchError(f"bits must be a whole number, got {bits!r}")
    if not 1 <= int(bits) <= MAX_BITS:
        raise HashbenchError(f"bits must be between 1 and {MAX_BITS}, got {bits}")
    return int(bits)


def _check_packed(codes, what: str, bits: int | None = None) -> np.ndarray:
    a = np.asarray(codes)
    if a.ndim != 2:
        raise HashbenchError(f"{what} must be a 2-D packed uint8 array, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise HashbenchError(
            f"{what} must be packed uint8 (use hashbench.evaluate.pack_codes), got dtype {a.dtype}"
        )
    if bits is not None:
        width = (bits + 7) // 8
        if a.shape[1] != width:
            raise HashbenchError(
                f"{what} are {a.shape[1]} bytes wide but bits={bits} packs into {width} bytes; "
                "pass the code length the codes were packed with"
            )
        spare = 8 * width - bits
        if spare and a.shape[0] and (a[:, -1] & np.uint8((1 << spare) - 1)).any():
            raise HashbenchError(
                f"{what} have nonzero padding bits beyond bit {bits}; pack them with pack_codes "
                "or pass the right bits"
            )
    return np.ascontiguousarray(a)


def _dist_dtype(bits: int):
    return np.uint8 if bits <= 255 else np.uint16


def _to_words(packed: np.ndarray) -> np.ndarray:
    """uint8 (N, W) -> uint64 (N, ceil(W/8)), zero-padded bytes."""
    n, width = packed.shape
    words = -(-width // 8)
    if width == 8 * words:
        return np.ascontiguousarray(packed).view(np.uint64)
    padded = np.zeros((n, 8 * words), np.uint8)
    padded[:, :width] = packed
    return padded.view(np.uint64)


def _distance_block(qw: np.ndarray, dbw: np.ndarray, out: np.ndarray, buf: np.ndarray) -> None:
    """out[i, j] = popcount(qw[i] ^ dbw[:, j]). qw (c, W) uint64, dbw (W, ndb) uint64 (C order),
    out (c, ndb) uint8/uint16, buf a uint64 scratch of at least (c, min(_COL_BLOCK, ndb))."""
    c, nwords = qw.shape
    ndb = dbw.shape[1]
    for j0 in range(0, ndb, _COL_BLOCK):
        j1 = min(ndb, j0 + _COL_BLOCK)
        x = buf[:c, : j1 - j0]
        o = out[:, j0:j1]
        np.bitwise_xor(qw[:, 0, None], dbw[0, None, j0:j1], out=x)
        np.bitwise_count(x, out=o)
        for w in range(1, nwords):
            np.bitwise_xor(qw[:, w, None], dbw[w, None, j0:j1], out=x)
            np.add(o, np.bitwise_count(x), out=o)


# --------------------------------------------------------------------------------------------
# labels


class _Labels:
    """Relevance between queries and database items (single-label class ids or multi-hot)."""

    def __init__(self, query_labels, db_labels, nq: int, ndb: int):
        ql, dl = np.asarray(query_labels), np.asarray(db_labels)
        for what, lab, n in (("query", ql, nq), ("database", dl, ndb)):
            if lab.ndim not in (1, 2):
                raise HashbenchError(
                    f"{what} labels must be 1-D class ids or 2-D multi-hot, got shape {lab.shape}"
                )
            if lab.shape[0] != n:
                raise HashbenchError(
                    f"{what} codes have {n} rows but {what} labels have {lab.shape[0]}"
                )
        if ql.ndim != dl.ndim:
            kinds = {1: "1-D class ids", 2: "2-D multi-hot"}
            raise HashbenchError(
                f"query labels are {kinds[ql.ndim]} but database labels are {kinds[dl.ndim]}; "
                "use the same kind for both"
            )
        self.multi = ql.ndim == 2
        if not self.multi:
            for what, lab in (("query", ql), ("database", dl)):
                if not np.issubdtype(lab.dtype, np.integer):
                    raise HashbenchError(
                        f"{what} labels must be integer class ids, got dtype {lab.dtype}; "
                        "cast with .astype(int) (or pass 2-D multi-hot labels)"
                    )
            classes, inverse = np.unique(np.concatenate([ql.astype(np.int64), dl.astype(np.int64)]),
                                         return_inverse=True)
            dtype = np.uint8 if len(classes) <= 256 else (np.uint16 if len(classes) <= 65536 else np.int64)
            inverse = inverse.astype(dtype)
            self.q, self.db = inverse[:nq], np.ascontiguousarray(inverse[nq:])
        else:
            if ql.shape[1] != dl.shape[1]:
                raise HashbenchError(
                    f"query labels have {ql.shape[1]} columns but database labels {dl.shape[1]}; "
                    "multi-hot labels must share one label vocabulary"
                )
            if ql.shape[1] == 0:
                raise HashbenchError("multi-hot labels have 0 columns; give at least one label")
            bits = []
            for what, lab in (("query", ql), ("database", dl)):
                if lab.dtype != np.bool_:
                    if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating)):
                        raise HashbenchError(f"{what} labels must be numeric or bool, got dtype {lab.dtype}")
                    if not ((lab == 0) | (lab == 1)).all():
                        raise HashbenchError(
                            f"2-D {what} labels must be multi-hot with values in {{0, 1}}; "
                            "pass single-label class ids as a 1-D array"
                        )
                    lab = lab == 1
                bits.append(_to_words(np.packbits(lab, axis=1)))
            self.q, self.db = bits[0], np.ascontiguousarray(bits[1])

    def pairs(self, q0: int, cols: np.ndarray) -> np.ndarray:
        """Relevance of db items ``cols`` (c, k) to queries q0..q0+c-1 -> bool (c, k)."""
        c = cols.shape[0]
        if not self.multi:
            return self.db[cols] == self.q[q0:q0 + c, None]
        qb = self.q[q0:q0 + c]
        rel = (self.db[cols, 0] & qb[:, None, 0]) != 0
        for w in range(1, qb.shape[1]):
            rel |= (self.db[cols, w] & qb[:, None, w]) != 0
        return rel

    def row(self, i: int) -> np.ndarray:
        """Relevance of every database item to query i -> bool (ndb,)."""
        if not self.multi:
            return self.db == self.q[i]
        qb = self.q[i]
        rel = (self.db[:, 0] & qb[0]) != 0
        for w in range(1, qb.shape[0]):
            rel |= (self.db[:, w] & qb[w]) != 0
        return rel


@dataclass
class _Problem:
    qw: np.ndarray  # (nq, W) uint64
    dbw: np.ndarray  # (W, ndb) uint64
    labels: _Labels
    bits: int
    nq: int
    ndb: int
    topk: int  # effective K (1..ndb)
    chunk: int  # queries per chunk (numpy engine)
    chunk_bytes: int
    engine: str  # "numba" or "numpy"

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (q0, dist) with dist (c, ndb) Hamming distances of queries q0..q0+c-1.
        The dist buffer is reused between chunks."""
        c = min(self.chunk, self.nq)
        dist = np.empty((c, self.ndb), _dist_dtype(self.bits))
        buf = np.empty((c, min(_COL_BLOCK, self.ndb)), np.uint64)
        for q0 in range(0, self.nq, c):
            d = dist[: min(c, self.nq - q0)]
            _distance_block(self.qw[q0:q0 + c], self.dbw, d, buf)
            yield q0, d


def _prepare(query_codes, db_codes, query_labels, db_labels, bits, topk, chunk_bytes,
             engine: str | None = None, kernel: str = "evaluate") -> _Problem:
    """Check the inputs and build the problem; with the numba engine, make ``kernel`` ("map" or
    "evaluate") ready for its types."""
    bits = check_bits(bits)
    q = _check_packed(query_codes, "query codes", bits)
    db = _check_packed(db_codes, "database codes", bits)
    nq, ndb = q.shape[0], db.shape[0]
    if nq == 0 or ndb == 0:
        raise HashbenchError(f"need at least one query and one database item, got {nq} and {ndb}")
    labels = _Labels(query_labels, db_labels, nq, ndb)
    if topk is None:
        k = ndb
    else:
        if isinstance(topk, (bool, np.bool_)) or not isinstance(topk, (int, np.integer)):
            raise HashbenchError(f"topk must be a positive integer or None (whole database), got {topk!r}")
        if topk <= 0:
            raise HashbenchError(f"topk must be a positive integer or None (whole database), got {topk}")
        k = min(int(topk), ndb)
    if isinstance(chunk_bytes, (bool, np.bool_)) or not isinstance(chunk_bytes, (int, np.integer)) \
            or chunk_bytes <= 0:
        raise HashbenchError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
    engine = eval_engine(engine)
    chunk = int(max(1, min(_MAX_CHUNK_ROWS, chunk_bytes // (_CELL_BYTES * ndb))))
    prob = _Problem(
        qw=_to_words(q), dbw=np.ascontiguousarray(_to_words(db).T), labels=labels,
        bits=bits, nq=nq, ndb=ndb, topk=k, chunk=chunk, chunk_bytes=int(chunk_bytes), engine=engine,
    )
    if engine == "numba":
        # read-only inputs (np.load with mmap_mode, say) would be another type to compile for
        prob.qw, prob.dbw = (a if a.flags.writeable else a.copy() for a in (prob.qw, prob.dbw))
        _numba_ready(prob, kernel)
    return prob


def _numba_ready(prob: _Problem, kernel: str) -> None:
    """Compile a numba kernel ("map" or "evaluate") for this problem's argument types, or load
    it from the disk cache: a call on zero queries, here in the calling thread, so that neither
    compiling nor its memory happens inside the work (once per process and types, then a no-op;
    a cold compile takes ~2 s, a load from the cache ~0.3 s for the first kernel of a process)."""
    kernels = _numba_kernels()
    nb, dtype = prob.bits + 1, _dist_dtype(prob.bits)
    dist, hist = np.empty((1, 1), dtype), np.empty((1, nb), np.int64)
    ranked, start = np.zeros(8, np.bool_), np.empty(nb, np.int64)
    q, db = prob.labels.q, prob.labels.db
    if kernel == "map":
        one = np.empty(1, np.int64)
        kernels.map_at_k_rows(prob.qw, prob.dbw, q, db, 0, 0, 1, 256, 0, 0, dist, hist, dist,
                              hist[:, :1], dist, one, one, ranked, start, one[:0], np.empty(0))
    else:
        stats = _Stats.empty(0, nb, 1)
        kernels.evaluate_rows(prob.qw, prob.dbw, q, db, 0, 0, np.ones(1, np.int64), 256, dist, ranked,
                              start, stats.hist, stats.rhist, stats.hits_at, stats.s_at, stats.s_all)


def _numba_blocks(prob: _Problem, n: int, fixed_bytes: int, query_bytes: int) -> tuple[int, int]:
    """(threads, cb) for n queries: threads = min(_threads(), n); cb queries per piece, each
    thread holding fixed_bytes + cb * query_bytes of scratch. cb: at most _NUMBA_BLOCK_ROWS,
    cb * query_bytes at most _NUMBA_BLOCK_BYTES (re-read from cache), all threads' scratch within
    chunk_bytes, at most ceil(n / threads) (a piece for every thread); and at least 1."""
    threads = min(_threads(), n)
    cb = min(_NUMBA_BLOCK_ROWS, _NUMBA_BLOCK_BYTES // query_bytes,
             (prob.chunk_bytes // threads - fixed_bytes) // query_bytes, -(-n // threads))
    return threads, int(max(1, cb))


def _numba_parallel(q0: int, q1: int, threads: int, cb: int, scratch, call) -> None:
    """Run ``call(a, b, *buffers)`` over queries [q0, q1) in pieces [a, b) of cb queries, on
    ``threads`` threads that each take the next piece when done; each thread makes its own
    buffers once with ``scratch()``. The kernels release the GIL."""
    pieces = deque((a, min(q1, a + cb)) for a in range(q0, q1, cb))

    def worker() -> None:
        buffers = scratch()
        while True:
            try:
                a, b = pieces.popleft()
            except IndexError:
                return
            call(a, b, *buffers)

    if threads == 1:
        worker()
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="hashbench-eval") as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()


def _numba_tile(prob: _Problem) -> int:
    """Database items per tile: _NUMBA_TILE_BYTES of code words."""
    return max(64, _NUMBA_TILE_BYTES // (8 * prob.qw.shape[1]))


def _ranked(n: int) -> np.ndarray:
    """A relevance-by-rank scratch of n ranks, rounded up to whole uint64 words (the kernels read
    it 8 ranks at a time)."""
    return np.empty(8 * -(-n // 8), np.bool_)


# --------------------------------------------------------------------------------------------
# mAP@K (the one path; evaluate uses it too)


def _cutoff_estimate(dist: np.ndarray, k: int, bits: int) -> np.ndarray:
    """Per row, a distance t whose ball {d <= t} likely holds >= k items (exact when the
    database is small enough to be histogrammed whole). int64 (c,)."""
    c, ndb = dist.shape
    if k >= ndb:
        return np.full(c, bits, np.int64)
    s, target = _sample_plan(ndb, k)
    sample = dist if s == ndb else dist[:, (np.arange(s, dtype=np.int64) * ndb) // s]
    nb = bits + 1
    flat = sample.astype(np.int64) + (np.arange(c, dtype=np.int64) * nb)[:, None]
    cum = np.cumsum(np.bincount(flat.ravel(), minlength=c * nb).reshape(c, nb), axis=1)
    reached = cum >= target
    return np.where(reached.any(axis=1), reached.argmax(axis=1), bits).astype(np.int64)


def _ap_at_k_block(dist: np.ndarray, q0: int, prob: _Problem) -> tuple[np.ndarray, np.ndarray]:
    """numpy engine: hits within the top K and the AP@K numerator of each row of a distance
    block -> (int64 (c,), float64 (c,)); AP@K = numerator / hits.

    Exact stable top K: the ball {d <= t_i} of each row (t_i from a sampled histogram, checked
    to hold >= K items, else set to the exact K-th distance) is listed in index order, stably
    sorted by (row, distance) and cut at K. The numerator is summed left to right in rank order
    (a cumulative sum; non-relevant positions add 0.0), as the numba kernel does."""
    c, ndb = dist.shape
    k, bits = prob.topk, prob.bits
    t = _cutoff_estimate(dist, k, bits)
    while True:
        idx = np.flatnonzero(dist <= t[:, None].astype(dist.dtype))
        bounds = np.searchsorted(idx, np.arange(c + 1, dtype=np.int64) * ndb)
        counts = np.diff(bounds)
        short = np.flatnonzero(counts < k)
        if not len(short):
            break
        del idx
        for i in short:  # rare: the sample underestimated; use the exact K-th distance
            t[i] = np.sort(dist[i], kind="stable")[k - 1]
    # Stable sort by (row, distance) with uint16 keys (numpy radix sort), in groups of rows
    # small enough that row * (bits + 1) + distance fits in uint16 and holding at most
    # max(2 ndb, one row) candidates, so the temporaries below are O(ndb).
    nb = bits + 1
    max_rows = max(1, 65536 // nb)
    flat = dist.ravel()
    pos = np.arange(k, dtype=np.int64)
    rank = np.arange(1, k + 1, dtype=np.int64)
    hits = np.zeros(c, np.int64)
    num = np.zeros(c)
    r0 = 0
    while r0 < c:
        r1 = int(np.searchsorted(bounds, bounds[r0] + 2 * ndb, side="right")) - 1
        r1 = max(r0 + 1, min(c, r0 + max_rows, r1))
        s, e = bounds[r0], bounds[r1]
        key = np.repeat(np.arange(r1 - r0, dtype=np.uint16) * np.uint16(nb), counts[r0:r1])
        key += flat.take(idx[s:e])
        order = np.argsort(key, kind="stable")
        del key
        top = order[(bounds[r0:r1, None] - s) + pos]  # (g, k) positions in idx[s:e]
        del order
        top += s
        top = idx.take(top)
        top -= (np.arange(r0, r1, dtype=np.int64) * ndb)[:, None]  # flat index -> db index
        rel = prob.labels.pairs(q0 + r0, top)
        del top
        cum = np.cumsum(rel, axis=1, dtype=np.int64)
        hits[r0:r1] = cum[:, -1]
        cum *= rel  # hits at each relevant rank, 0 elsewhere
        num[r0:r1] = np.cumsum(cum / rank, axis=1)[:, -1]
        r0 = r1
    return hits, num


def _sample_plan(ndb: int, k: int) -> tuple[int, int]:
    """(s, target): estimate the top-K cutoff from s evenly spaced items (j = i * ndb // s) as
    the smallest distance within which >= target of them lie. The whole database and target K
    (exact) when ndb <= _SAMPLE_COLS, else a margin of three standard deviations over the
    expected count, so that the estimated ball rarely holds fewer than K items."""
    if ndb <= _SAMPLE_COLS:
        return ndb, k
    s = _SAMPLE_COLS
    m = k * s / ndb
    return s, min(s, math.ceil(m + 3.0 * math.sqrt(m) + 2.0))


def _ap_at_k_numba(prob: _Problem) -> tuple[np.ndarray, np.ndarray]:
    """numba engine: (hits within the top K, AP@K numerator) of every query, as _ap_at_k_block.

    Sampled mode (see hashbench._evaluate_numba.map_at_k_rows) when K is small against ndb: room
    for max(_CANDIDATES_PER_K * K, ndb / 64) candidates per query, at most half the database;
    else exact mode."""
    kernels = _numba_kernels()
    k, ndb, nb = prob.topk, prob.ndb, prob.bits + 1
    dtype = _dist_dtype(prob.bits)
    size = np.dtype(dtype).itemsize
    tile = _numba_tile(prob)
    room = min(ndb, max(_CANDIDATES_PER_K * k, ndb // 64))
    sample, target = _sample_plan(ndb, k) if ndb > _SAMPLE_COLS and 2 * room <= ndb else (0, 0)
    hits = np.empty(prob.nq, np.int64)
    num = np.empty(prob.nq)

    if sample:  # per query a tile of distances and the candidates; per thread one row to redo
        threads, cb = _numba_blocks(prob, prob.nq, ndb * size + k, tile * size + room * (8 + size))

        def scratch():
            return (np.empty((1, ndb), dtype), np.empty((1, nb), np.int64), np.empty((cb, tile), dtype),
                    np.empty((cb, room), np.int64), np.empty((cb, room), dtype), np.empty(cb, np.int64),
                    np.empty(cb, np.int64), _ranked(k), np.empty(nb, np.int64))
    else:  # per query its whole distance row
        threads, cb = _numba_blocks(prob, prob.nq, k, ndb * size)

        def scratch():
            one = np.empty(1, np.int64)
            return (np.empty((cb, ndb), dtype), np.empty((cb, nb), np.int64), np.empty((1, 1), dtype),
                    np.empty((1, 1), np.int64), np.empty((1, 1), dtype), one, one, _ranked(k),
                    np.empty(nb, np.int64))

    def call(a, b, *buffers):
        kernels.map_at_k_rows(prob.qw, prob.dbw, prob.labels.q, prob.labels.db, a, b, k, tile, sample,
                              target, *buffers, hits[a:b], num[a:b])

    _numba_parallel(0, prob.nq, threads, cb, scratch, call)
    return hits, num


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def map_at_k(query_codes, db_codes, query_labels, db_labels, *, bits: int, topk: int | None,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES, engine: str | None = None) -> float:
    """mAP@K in the DeepHash-pytorch / CIBHash convention on the stable Hamming ranking.

    Codes: packed uint8 (nq, W) and (ndb, W) with W = ceil(bits/8). Labels as in ``evaluate``.
    topk: K (clipped to ndb), None = whole database. Per query AP@K is the mean over relevant
    items in the top K of (rank among relevant / position); a query with no hit scores 0 and
    counts. Equal, bit for bit, to ``evaluate(...)["map"]`` and across engines. engine and
    memory as in ``evaluate``.
    """
    prob = _prepare(query_codes, db_codes, query_labels, db_labels, bits, topk, chunk_bytes, engine, "map")
    if prob.engine == "numba":
        hits, num = _ap_at_k_numba(prob)
    else:
        hits = np.empty(prob.nq, np.int64)
        num = np.empty(prob.nq)
        for q0, dist in prob.blocks():
            hits[q0:q0 + dist.shape[0]], num[q0:q0 + dist.shape[0]] = _ap_at_k_block(dist, q0, prob)
    return float(_ratio(num, hits).mean())


# --------------------------------------------------------------------------------------------
# all metrics


def _default_pk_points(ndb: int) -> list[int]:
    grid, base = [1, 10, 50], 100
    while base < ndb:
        grid += [base, 2 * base, 5 * base]
        base *= 10
    return sorted({k for k in grid if k < ndb} | {ndb})


def _tie_aware_ap(n_le: np.ndarray, r_le: np.ndarray, n_rel: np.ndarray, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP over random tie orders, closed form. n_le, r_le: int64 (c, bits+1) items /
    relevant items with distance <= d; n_rel: (c,) relevant items in the database."""
    n = np.diff(n_le, axis=1, prepend=0)
    r = np.diff(r_le, axis=1, prepend=0)
    n_lt, r_lt = n_le - n, r_le - r
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
        a = r_lt + 1.0
        # sum_{j=1..n} (a + (j-1) b) / (N + j) = b n + (a - b (N + 1)) (H[N+n] - H[N])
        s = b * n + (a - b * (n_lt + 1)) * (harmonic[n_le] - harmonic[n_lt])
        contrib = np.where(r > 0, r / np.maximum(n, 1) * s, 0.0)
    total = contrib.sum(axis=1)
    return np.divide(total, n_rel, out=np.zeros(len(total)), where=n_rel > 0)


@dataclass
class _Stats:
    """Per-query sufficient statistics of every metric, for queries q0..q0+c-1 (both engines).

    hist / rhist (c, bits+1) int64: items / relevant items at each distance; hits_at / s_at
    (c, len(cuts)): relevant items within the first cuts[e] ranks of the stable ranking and
    their sum of hits / rank, left to right in rank order; s_all (c,): that sum over the whole
    ranking."""

    hist: np.ndarray
    rhist: np.ndarray
    hits_at: np.ndarray
    s_at: np.ndarray
    s_all: np.ndarray

    @classmethod
    def empty(cls, c: int, nb: int, ncuts: int) -> _Stats:
        return cls(np.empty((c, nb), np.int64), np.empty((c, nb), np.int64),
                   np.empty((c, ncuts), np.int64), np.empty((c, ncuts)), np.empty(c))


def _stats_numpy(dist: np.ndarray, q0: int, prob: _Problem, cuts: np.ndarray) -> _Stats:
    """numpy engine: _Stats of the rows of a distance block, one stable sort per row."""
    c, nb = dist.shape[0], prob.bits + 1
    out = _Stats.empty(c, nb, len(cuts))
    radii = np.arange(nb, dtype=dist.dtype)
    for i in range(c):  # per row: O(ndb) memory whatever the chunk
        row = dist[i]
        rel = prob.labels.row(q0 + i)
        order = np.argsort(row, kind="stable")
        hits = np.flatnonzero(rel.take(order))  # 0-based ranks of the relevant items
        n_le = np.searchsorted(row.take(order), radii, side="right")  # items at distance <= d
        del order
        out.hist[i] = np.diff(n_le, prepend=0)
        out.rhist[i] = np.diff(np.searchsorted(hits, n_le, side="left"), prepend=0)
        # s[h]: the first h terms i / r_i (r_i the 1-based rank of the i-th relevant item)
        # summed left to right, as the numba kernel does; s[0] = 0
        s = np.concatenate([[0.0], np.cumsum(np.arange(1, len(hits) + 1) / (hits + 1))])
        out.hits_at[i] = np.searchsorted(hits, cuts, side="left")
        out.s_at[i] = s[out.hits_at[i]]
        out.s_all[i] = s[-1]
    return out


def _stats_numba(prob: _Problem, q0: int, q1: int, cuts: np.ndarray) -> _Stats:
    """numba engine: _Stats of queries q0..q1-1 (see hashbench._evaluate_numba.evaluate_rows)."""
    kernels = _numba_kernels()
    out = _Stats.empty(q1 - q0, prob.bits + 1, len(cuts))
    dtype, tile = _dist_dtype(prob.bits), _numba_tile(prob)
    row = prob.ndb * np.dtype(dtype).itemsize
    threads, cb = _numba_blocks(prob, q1 - q0, prob.ndb, row)

    def scratch():
        return np.empty((cb, prob.ndb), dtype), _ranked(prob.ndb), np.empty(prob.bits + 1, np.int64)

    def call(a, b, dist, ranked, start):
        r = slice(a - q0, b - q0)
        kernels.evaluate_rows(prob.qw, prob.dbw, prob.labels.q, prob.labels.db, a, b, cuts, tile,
                              dist, ranked, start, out.hist[r], out.rhist[r], out.hits_at[r],
                              out.s_at[r], out.s_all[r])

    _numba_parallel(q0, q1, threads, cb, scratch, call)
    return out


def _stat_blocks(prob: _Problem, cuts: np.ndarray) -> Iterator[tuple[int, _Stats]]:
    """Yield (q0, _Stats of queries q0..) for every query, in order, with the problem's engine."""
    if prob.engine == "numpy":
        for q0, dist in prob.blocks():
            yield q0, _stats_numpy(dist, q0, prob, cuts)
        return
    nb = prob.bits + 1
    # rows of statistics per call: they and the metrics' temporaries (~ 16 floats per bucket
    # or cut of a row) within chunk_bytes
    rows = int(max(1, min(_MAX_CHUNK_ROWS, prob.chunk_bytes // (128 * (nb + len(cuts))))))
    for q0 in range(0, prob.nq, rows):
        yield q0, _stats_numba(prob, q0, min(prob.nq, q0 + rows), cuts)


def evaluate(query_codes, db_codes, query_labels, db_labels, *, bits: int, topk: int | None = None,
             pk_points: Sequence[int] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             engine: str | None = None, per_query: bool = False) -> dict:
    """Evaluate Hamming ranking retrieval; return a JSON-serializable dict of metrics (with
    ``per_query``, also the per-query values, see below).

    Inputs: packed uint8 codes (nq, W) and (ndb, W), W = ceil(bits/8), bits in 1..1024 (padding
    bits zero); labels 1-D integer class ids (relevant = same class) or 2-D multi-hot {0,1}/bool
    with the same columns (relevant = >= 1 shared label), of the same kind for queries and
    database. topk: K for ``map`` (None = ndb; larger than ndb is clipped). pk_points: k values
    for ``precision_at_k`` (clipped to ndb; default 1, 10, 50, 100, 200, 500, 1000, ... < ndb,
    plus ndb). engine: ``"auto"``, ``"numba"`` or ``"numpy"`` (see ``eval_engine``; None reads
    ``$HASHBENCH_EVAL_ENGINE``); the numbers do not depend on it. Bad input raises HashbenchError.

    Returns: ``map`` (mAP@K, DeepHash convention: AP normalised by hits within K, zero-hit
    queries count 0), ``topk`` (K used), ``map_full`` (AP over the whole ranking normalised by
    all relevant items; no relevant -> 0), ``map_tie_aware`` (expectation of map_full over
    random orders within equal distances, closed form), ``precision_h2``/``recall_h2`` (Hamming
    ball d <= 2; empty ball -> precision 0; no relevant -> recall 0), ``pr_curve`` {radius
    [0..bits], precision, recall} (ball of each radius, same rules), ``precision_at_k`` {k,
    precision}, ``num_queries``, ``num_database``, ``bits``, ``engine`` (the one that ran).
    Ranking is by distance, ties by database index (stable), except for map_tie_aware. All means
    are over all queries. With ``per_query``, ``per_query`` {metric: float64 (nq,) array, in
    query order} holds the value of each of ``map``, ``map_full``, ``map_tie_aware``,
    ``precision_h2`` and ``recall_h2`` for every query (each metric is their mean; arrays, so
    that entry is not JSON).

    Memory, on top of the inputs, their uint64 word copies and the per-query results
    (O(nq * (bits + len(pk_points))) floats); results do not depend on chunk_bytes (per-query
    values are computed row by row and averaged once at the end):

    - numpy engine: queries in chunks of c = clip(chunk_bytes // (24 * ndb), 1, 4096) rows; peak
      working memory at most 24 * c * ndb + 96 * ndb bytes (<= 2 * chunk_bytes once c >= 4): the
      distance block, an XOR scratch, and per row a stable argsort and gathers.
    - numba engine: per thread, a block of cb <= 32 distance rows (uint8, uint16 above 255 bits;
      at most 4 MiB) and an ndb-byte ranking (``map_at_k``: K bytes; for K << ndb one row, and
      per query a tile of distances and room for max(8 K, ndb / 64) candidates of 9-10 bytes),
      cb cut so that all threads' scratch fits chunk_bytes (but at least one query each); the
      statistics of up to clip(chunk_bytes // (128 * (bits + 2 + len(pk_points))), 1, 4096)
      queries at a time.
    """
    prob = _prepare(query_codes, db_codes, query_labels, db_labels, bits, topk, chunk_bytes, engine)
    ndb, nb = prob.ndb, prob.bits + 1
    if pk_points is None:
        ks = _default_pk_points(ndb)
    else:
        req = np.asarray(pk_points)
        if req.ndim != 1 or len(req) == 0 or not np.issubdtype(req.dtype, np.integer) or (req <= 0).any():
            raise HashbenchError(f"pk_points must be a non-empty list of positive integers, got {pk_points!r}")
        ks = sorted({min(int(k), ndb) for k in req})
    ks_arr = np.asarray(ks, dtype=np.int64)
    # the ranks where hits and the AP sum are read: every k of precision@k, and K
    cuts = np.asarray(sorted(set(ks) | {prob.topk}), dtype=np.int64)
    at_k, at_ks = int(np.searchsorted(cuts, prob.topk)), np.searchsorted(cuts, ks_arr)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, ndb + 1, dtype=np.float64))])
    radii = np.arange(nb)
    r2 = min(2, prob.bits)

    ap_k = np.empty(prob.nq)
    ap_full = np.empty(prob.nq)
    ap_tie = np.empty(prob.nq)
    prec = np.empty((prob.nq, nb))
    rec = np.empty((prob.nq, nb))
    pk = np.empty((prob.nq, len(ks)))
    for q0, st in _stat_blocks(prob, cuts):
        q1 = q0 + len(st.s_all)
        n_le = np.cumsum(st.hist, axis=1)
        r_le = np.cumsum(st.rhist, axis=1)
        n_rel = r_le[:, -1]
        ap_k[q0:q1] = _ratio(st.s_at[:, at_k], st.hits_at[:, at_k])
        ap_full[q0:q1] = _ratio(st.s_all, n_rel)
        pk[q0:q1] = st.hits_at[:, at_ks] / ks_arr
        prec[q0:q1] = _ratio(r_le, n_le)
        rec[q0:q1] = _ratio(r_le, n_rel[:, None])
        ap_tie[q0:q1] = _tie_aware_ap(n_le, r_le, n_rel, harmonic)

    nq = prob.nq
    prec_curve, rec_curve = prec.mean(axis=0), rec.mean(axis=0)
    result = {
        "map": float(ap_k.mean()),
        "topk": int(prob.topk),
        "map_full": float(ap_full.mean()),
        "map_tie_aware": float(ap_tie.mean()),
        "precision_h2": float(prec_curve[r2]),
        "recall_h2": float(rec_curve[r2]),
        "pr_curve": {
            "radius": [int(r) for r in radii],
            "precision": [float(x) for x in prec_curve],
            "recall": [float(x) for x in rec_curve],
        },
        "precision_at_k": {"k": [int(k) for k in ks], "precision": [float(x) for x in pk.mean(axis=0)]},
        "num_queries": int(nq),
        "num_database": int(ndb),
        "bits": int(prob.bits),
        "engine": prob.engine,
    }
    if per_query:
        result["per_query"] = {"map": ap_k, "map_full": ap_full, "map_tie_aware": ap_tie,
                               "precision_h2": prec[:, r2].copy(), "recall_h2": rec[:, r2].copy()}
    return result
