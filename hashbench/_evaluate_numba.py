"""Compiled kernels of the evaluation engine (numba; optional: ``pip install 'hashbench[fast]'``).

Used by :mod:`hashbench.evaluate` when its engine is ``numba`` (the default when numba imports).
This module imports without numba too (``AVAILABLE`` is then False and nothing here is called).
Kernels compile on first use for the argument types they meet (distance dtype uint8 or uint16;
class-id or multi-hot labels) and are cached on disk (``cache=True``: in ``__pycache__`` beside
this file, or under ``$NUMBA_CACHE_DIR``), so a later process loads them instead of compiling.

Per query, everything comes from linear passes over the database, no sort:

1. ``_distances``: d_j = popcount(q XOR db_j) over uint64 words into a row of uint8/uint16, and
   the histogram h[d] of the row (bits + 1 buckets). Tiled: a block of queries against
   ``tile`` database items at a time, so the database words are read from cache.
2. The stable ranking is a counting sort: an item at distance d preceded (by database index) by
   m items at distance d has rank n_lt[d] + m, with n_lt[d] = h[0] + ... + h[d-1].
   ``map_at_k_rows`` places only the items with d <= t (t the smallest distance whose ball holds
   K items) and keeps the relevance of ranks < K; for K << ndb it skips the histogram: t comes
   from a sample with a margin, and one pass keeps the few items within t (checked: at least
   K of them, else that query is redone exactly). ``evaluate_rows`` places every item (an
   ndb-byte array of relevance in rank order) and counts the relevant items per distance.
3. One pass over the relevance in rank order accumulates, left to right in float64 with no
   reassociation, ``hits += 1; s += hits / rank`` at each relevant item (rank from 1), as the
   brute-force reference does; ``evaluate_rows`` records (hits, s) at the cut points it is given.

The numpy engine of :mod:`hashbench.evaluate` computes the same integers and performs the same
float operations in the same order, so both engines return identical numbers. Every kernel
releases the GIL and writes only to the arrays it is given (no allocation): the caller runs
query slices on threads, each with its own scratch.
"""

from __future__ import annotations

import sys

import numpy as np

try:
    from numba import njit, types
    from numba.extending import intrinsic, overload
except ImportError as exc:  # the numpy engine runs instead; these stubs are never called
    AVAILABLE, IMPORT_ERROR = False, exc

    def njit(*args, **kwargs):
        return lambda fn: fn

    intrinsic = njit()

    def overload(fn, **kwargs):
        return lambda impl: impl
else:
    AVAILABLE, IMPORT_ERROR = True, None
if sys.byteorder != "little":  # _accumulate reads bytes as little-endian words
    AVAILABLE, IMPORT_ERROR = False, ImportError("the numba kernels need a little-endian CPU")


@intrinsic
def _popcount(typingctx, x):
    """popcount of a uint64 (LLVM ``ctpop``: one instruction, vectorized where the CPU can)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def _relevant(q, db_labels, j):
    """Whether database item j is relevant to a query with label(s) ``q`` (compiled below)."""


@overload(_relevant, inline="always")
def _relevant_impl(q, db_labels, j):
    if db_labels.ndim == 1:  # class ids: the same class
        def same_class(q, db_labels, j):
            return db_labels[j] == q
        return same_class

    def shares_a_label(q, db_labels, j):  # multi-hot packed in uint64 words: >= 1 common bit
        for w in range(db_labels.shape[1]):
            if db_labels[j, w] & q[w]:
                return True
        return False
    return shares_a_label


@intrinsic
def _lowest_bit(typingctx, x):
    """Index of the lowest set bit of a nonzero uint64 (LLVM ``cttz``)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, True))

    return types.uint64(types.uint64), codegen


# Loops over one contiguous 1-D segment each: LLVM vectorizes the popcount and keeps the
# others tight, which it does not do for the same loops written inline on 2-D indices.


@njit(nogil=True, cache=True)
def _popcounts(a, words, out):
    for j in range(out.shape[0]):
        out[j] = _popcount(a ^ words[j])


@njit(nogil=True, cache=True)
def _add_popcounts(a, words, out):
    for j in range(out.shape[0]):
        out[j] += _popcount(a ^ words[j])


@njit(nogil=True, cache=True)
def _count(row, hist):
    for j in range(row.shape[0]):
        hist[row[j]] += 1


@njit(nogil=True, cache=True)
def _distances(qw, dbw, q0, tile, dist, hist):
    """dist[i, j] = popcount(qw[q0 + i] XOR dbw[:, j]) and hist[i] = its histogram.

    qw (nq, W) uint64; dbw (W, ndb) uint64, C order; dist (c, ndb) uint8/uint16; hist (c, bits+1)
    int64, overwritten. Tiled: ``tile`` database items at a time for every row."""
    c, ndb = dist.shape
    hist[:c] = 0
    for j0 in range(0, ndb, tile):
        j1 = min(ndb, j0 + tile)
        for i in range(c):
            seg = dist[i, j0:j1]
            _popcounts(qw[q0 + i, 0], dbw[0, j0:j1], seg)
            for w in range(1, dbw.shape[0]):
                _add_popcounts(qw[q0 + i, w], dbw[w, j0:j1], seg)
            _count(seg, hist[i])


@njit(nogil=True, cache=True)
def _place_all(row, start, ranked, q, dblab):
    """Counting sort: the relevance of item j goes to rank start[d_j]++ (start[d] = n_lt[d])."""
    for j in range(row.shape[0]):
        d = row[j]
        p = start[d]
        start[d] = p + 1
        ranked[p] = _relevant(q, dblab, j)


@njit(nogil=True, cache=True)
def _place_top(row, t, start, k, ranked, q, dblab):
    """As _place_all for the items with d <= t, keeping ranks < k."""
    for j in range(row.shape[0]):
        d = row[j]
        if d <= t:
            p = start[d]
            start[d] = p + 1
            if p < k:
                ranked[p] = _relevant(q, dblab, j)


@njit(nogil=True, cache=True)
def _accumulate(ranked, p0, p1, hits, s):
    """Continue the AP sum over ranks p0..p1-1: (hits, s) after ``hits += 1; s += hits / (p + 1)``
    at each relevant rank p, in rank order. ranked: bool, its length a multiple of 8, read
    8 ranks at a time as little-endian uint64 words (the relevant ranks are the set bits,
    lowest first); bytes beyond ndb are zero."""
    if p0 >= p1:
        return hits, s
    words = ranked.view(np.uint64)
    for wi in range(p0 >> 3, (p1 + 7) >> 3):
        x = words[wi]
        if x == 0:
            continue
        base = wi << 3
        if base < p0:  # keep ranks >= p0
            x &= ~((np.uint64(1) << np.uint64(8 * (p0 - base))) - np.uint64(1))
        if base + 8 > p1:  # keep ranks < p1
            x &= (np.uint64(1) << np.uint64(8 * (p1 - base))) - np.uint64(1)
        while x:
            p = base + np.int64(_lowest_bit(x) >> np.uint64(3))
            hits += 1
            s += hits / (p + 1)
            x &= x - np.uint64(1)
    return hits, s


@njit(nogil=True, cache=True)
def _top_k_exact(row, h, k, start, ranked, q, dblab):
    """(hits, s) of the top k of one query from its whole distance row and histogram."""
    t, n = 0, h[0]  # the k-th item's distance: the smallest t with k items at d <= t
    while n < k:
        t += 1
        n += h[t]
    n = 0
    for d in range(t + 1):
        start[d] = n
        n += h[d]
    _place_top(row, t, start, k, ranked, q, dblab)
    return _accumulate(ranked, 0, k, 0, 0.0)


@njit(nogil=True, cache=True)
def _sampled_cutoff(qw, dbw, i, sample, target, hist):
    """The smallest t such that >= target of ``sample`` evenly spaced database items (j =
    s * ndb // sample) lie within distance t of query i (as the numpy engine's estimate)."""
    ndb = dbw.shape[1]
    hist[:] = 0
    for s in range(sample):
        j = (s * ndb) // sample
        d = 0
        for w in range(dbw.shape[0]):
            d += _popcount(qw[i, w] ^ dbw[w, j])
        hist[d] += 1
    t, n = 0, hist[0]
    while n < target:
        t += 1
        n += hist[t]
    return t


@njit(nogil=True, cache=True)
def _collect(seg, j0, t, cand_j, cand_d, n):
    """Append (j0 + j, d) for each d = seg[j] <= t while there is room; return the new count
    (which goes on counting past the room)."""
    cap = cand_j.shape[0]
    for j in range(seg.shape[0]):
        d = seg[j]
        if d <= t:
            if n < cap:
                cand_j[n] = j0 + j
                cand_d[n] = d
            n += 1
    return n


@njit(nogil=True, cache=True)
def map_at_k_rows(qw, dbw, qlab, dblab, q0, q1, k, tile, sample, target, dist, hist, buf,
                  cand_j, cand_d, cutoff, count, ranked, start, hits_k, s_k):
    """Hits and AP numerator within the top k of queries q0..q1-1 (output row i = query q0 + i).

    hits_k (q1-q0,) int64: relevant items among the first k of the stable ranking; s_k float64:
    their sum of hits / rank in rank order (AP@k = s_k / hits_k).

    sample == 0 (exact mode): per block of cb = dist.shape[0] queries, whole distance rows and
    their histograms, the exact k-th distance t, then the items with d <= t placed by rank.
    sample > 0 (sampled mode, for k << ndb): per block of cb = buf.shape[0] queries, a cutoff t
    from ``sample`` items (``target`` of them within t: a margin over k), then one tiled pass
    that keeps only (index, distance) of the items with d <= t, in index order, and a counting
    sort of those. When they are fewer than k (the sample underestimated) or more than the room
    in cand_j, that query is redone in exact mode in dist[0] (rare).

    Scratch: dist (cb or 1, ndb), hist (cb or 1, bits+1) int64, buf (cb, tile), cand_j (cb, room)
    int64, cand_d (cb, room), cutoff and count (cb,) int64, ranked (k rounded up to 8,) bool,
    start (bits+1,) int64. Sampled-mode arrays may be (1, 1) in exact mode."""
    ranked[:] = False
    if sample == 0:
        cb = dist.shape[0]
        for b0 in range(q0, q1, cb):
            c = min(cb, q1 - b0)
            _distances(qw, dbw, b0, tile, dist[:c], hist[:c])
            for i in range(c):
                hits_k[b0 - q0 + i], s_k[b0 - q0 + i] = _top_k_exact(
                    dist[i], hist[i], k, start, ranked, qlab[b0 + i], dblab)
        return
    cb, ndb = buf.shape[0], dbw.shape[1]
    for b0 in range(q0, q1, cb):
        c = min(cb, q1 - b0)
        for i in range(c):
            cutoff[i] = _sampled_cutoff(qw, dbw, b0 + i, sample, target, hist[0])
            count[i] = 0
        for j0 in range(0, ndb, tile):
            j1 = min(ndb, j0 + tile)
            for i in range(c):
                seg = buf[i, : j1 - j0]
                _popcounts(qw[b0 + i, 0], dbw[0, j0:j1], seg)
                for w in range(1, dbw.shape[0]):
                    _add_popcounts(qw[b0 + i, w], dbw[w, j0:j1], seg)
                count[i] = _collect(seg, j0, cutoff[i], cand_j[i], cand_d[i], count[i])
        for i in range(c):
            q, n = qlab[b0 + i], count[i]
            if n < k or n > cand_j.shape[1]:  # redo exactly
                _distances(qw, dbw, b0 + i, tile, dist[:1], hist[:1])
                hits_k[b0 - q0 + i], s_k[b0 - q0 + i] = _top_k_exact(
                    dist[0], hist[0], k, start, ranked, q, dblab)
                continue
            h = hist[0]
            h[:] = 0
            for e in range(n):
                h[cand_d[i, e]] += 1
            m = 0
            for d in range(h.shape[0]):
                start[d] = m
                m += h[d]
            for e in range(n):  # counting sort of the candidates (index order within a distance)
                d = cand_d[i, e]
                p = start[d]
                start[d] = p + 1
                if p < k:
                    ranked[p] = _relevant(q, dblab, cand_j[i, e])
            hits_k[b0 - q0 + i], s_k[b0 - q0 + i] = _accumulate(ranked, 0, k, 0, 0.0)


@njit(nogil=True, cache=True)
def evaluate_rows(qw, dbw, qlab, dblab, q0, q1, cuts, tile, dist, ranked, start,
                  hist, rhist, hits_at, s_at, s_all):
    """Per-query sufficient statistics of every metric, queries q0..q1-1 (output row i = q0 + i).

    hist / rhist (q1-q0, bits+1) int64: items / relevant items at each distance; hits_at / s_at
    (q1-q0, len(cuts)): relevant items among the first cuts[e] ranks (cuts ascending, in
    1..ndb) and their sum of hits / rank in rank order; s_all: that sum over the whole ranking.
    Scratch: dist (cb, ndb), ranked (ndb rounded up to 8,) bool, start (bits+1,) int64."""
    cb = dist.shape[0]
    nb, ncuts = hist.shape[1], cuts.shape[0]
    ranked[:] = False
    for b0 in range(q0, q1, cb):
        c = min(cb, q1 - b0)
        r0 = b0 - q0
        _distances(qw, dbw, b0, tile, dist[:c], hist[r0:r0 + c])
        for i in range(c):
            r = r0 + i
            h = hist[r]
            n = 0
            for d in range(nb):
                start[d] = n
                n += h[d]
            _place_all(dist[i], start, ranked, qlab[b0 + i], dblab)  # now start[d] = n_le[d]
            hits, s, p, e = 0, 0.0, 0, 0
            for d in range(nb):  # rank order, bucket by bucket, stopping at each cut
                before = hits
                while e < ncuts and cuts[e] <= start[d]:
                    hits, s = _accumulate(ranked, p, cuts[e], hits, s)
                    p = cuts[e]
                    hits_at[r, e], s_at[r, e] = hits, s
                    e += 1
                hits, s = _accumulate(ranked, p, start[d], hits, s)
                p = start[d]
                rhist[r, d] = hits - before
            s_all[r] = s
