"""Tests of hashbench.evaluate against brute-force references written here."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import hashbench.evaluate as ev
from hashbench.errors import HashbenchError
from hashbench.evaluate import (
    binarize,
    evaluate,
    hamming_distances,
    map_at_k,
    pack_codes,
    unpack_codes,
)

# ---------------------------------------------------------------------------------------------
# brute-force reference: python loops over queries, a stable argsort per query


def _relevance(ql, dl, i):
    if ql.ndim == 1:
        return dl == ql[i]
    return (dl.astype(bool) & ql[i].astype(bool)).any(axis=1)


def reference(qbits, dbits, ql, dl, topk, pk_points, curves=True):
    """All metrics of evaluate(), computed the obvious way from unpacked bool codes
    (curves=False skips the per-radius ball metrics)."""
    nq, ndb = len(qbits), len(dbits)
    nbits = qbits.shape[1]
    dist = (qbits[:, None, :] != dbits[None, :, :]).sum(axis=2)
    k = ndb if topk is None else min(topk, ndb)
    ap_k, ap_full, pks = [], [], []
    prec = np.zeros((nq, nbits + 1))
    rec = np.zeros((nq, nbits + 1))
    for i in range(nq):
        rel_db = _relevance(ql, dl, i)
        order = np.argsort(dist[i], kind="stable")
        rel = rel_db[order]
        # AP@K, DeepHash convention
        hits, s = 0, 0.0
        for pos in range(k):
            if rel[pos]:
                hits += 1
                s += hits / (pos + 1)
        ap_k.append(s / hits if hits else 0.0)
        # AP over the whole ranking / all relevant
        hits, s = 0, 0.0
        for pos in range(ndb):
            if rel[pos]:
                hits += 1
                s += hits / (pos + 1)
        n_rel = int(rel_db.sum())
        ap_full.append(s / n_rel if n_rel else 0.0)
        pks.append([rel[:kk].sum() / kk for kk in pk_points])
        for r in range(nbits + 1 if curves else 0):
            ball = dist[i] <= r
            inside = int(ball.sum())
            h = int((ball & rel_db).sum())
            prec[i, r] = h / inside if inside else 0.0
            rec[i, r] = h / n_rel if n_rel else 0.0
    r2 = min(2, nbits)
    return {
        "map": float(np.mean(ap_k)),
        "map_full": float(np.mean(ap_full)),
        "precision_h2": float(prec[:, r2].mean()),
        "recall_h2": float(rec[:, r2].mean()),
        "pr_precision": prec.mean(axis=0),
        "pr_recall": rec.mean(axis=0),
        "precision_at_k": np.mean(pks, axis=0),
    }


def make_data(rng, nq, ndb, nbits, multi, n_classes=5):
    """Random codes with few bits (many ties) and labels, with queries that have no relevant item."""
    qbits = rng.random((nq, nbits)) < 0.5
    dbits = rng.random((ndb, nbits)) < 0.5
    if multi:
        ql = (rng.random((nq, 6)) < 0.25).astype(np.int64)
        dl = (rng.random((ndb, 6)) < 0.2).astype(np.int64)
        dl[:, 5] = 0  # label 5 never occurs in the database
        ql[:3] = 0
        ql[:3, 5] = 1  # so these queries have no relevant item
    else:
        ql = rng.integers(0, n_classes, nq)
        dl = rng.integers(0, n_classes, ndb)
        ql[:3] = 99  # a class absent from the database
    return qbits, dbits, ql, dl


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("nbits", [4, 7, 12, 70])
def test_matches_bruteforce(nbits, multi):
    rng = np.random.default_rng(1000 + nbits + 7 * multi)
    qbits, dbits, ql, dl = make_data(rng, 30, 180, nbits, multi)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    pk_points = [1, 3, 10, 50, 180]
    if nbits <= 12:  # the premise: many ties
        d = hamming_distances(qp, dp)
        assert min(len(np.unique(row)) for row in d) <= nbits + 1 < 180
    for topk in (1, 5, 37, 180, 500, None):
        got = evaluate(qp, dp, ql, dl, bits=nbits, topk=topk, pk_points=pk_points)
        want = reference(qbits, dbits, ql, dl, topk, pk_points)
        assert got["topk"] == (180 if topk is None else min(topk, 180))
        for key in ("map", "map_full", "precision_h2", "recall_h2"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), key
        np.testing.assert_allclose(got["pr_curve"]["precision"], want["pr_precision"], atol=1e-9)
        np.testing.assert_allclose(got["pr_curve"]["recall"], want["pr_recall"], atol=1e-9)
        assert got["pr_curve"]["radius"] == list(range(nbits + 1))
        assert got["precision_at_k"]["k"] == pk_points
        np.testing.assert_allclose(got["precision_at_k"]["precision"], want["precision_at_k"], atol=1e-9)
        # map_at_k is the path evaluate uses: the very same number
        assert map_at_k(qp, dp, ql, dl, bits=nbits, topk=topk) == got["map"]
        assert got["num_queries"] == 30 and got["num_database"] == 180 and got["bits"] == nbits


@pytest.mark.parametrize("nbits", [300, 1024])
def test_wide_codes_and_many_labels(nbits):
    """Multi-word codes, uint16 distances, several row groups in the top-K sort (1024 bits:
    63 rows per uint16 key group) and multi-hot labels wider than one 64-bit word."""
    rng = np.random.default_rng(nbits)
    nq, ndb = 150, 120
    qbits = rng.random((nq, nbits)) < 0.5
    dbits = rng.random((ndb, nbits)) < 0.5
    dbits[::7] = qbits[0]  # some exact duplicates: ties at distance 0
    ql = rng.random((nq, 70)) < 0.03
    dl = rng.random((ndb, 70)) < 0.03
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    for topk in (10, None):
        want = reference(qbits, dbits, ql, dl, topk, [5], curves=False)
        got = evaluate(qp, dp, ql, dl, bits=nbits, topk=topk, pk_points=[5])
        assert got["map"] == pytest.approx(want["map"], abs=1e-9)
        assert got["map_full"] == pytest.approx(want["map_full"], abs=1e-9)
        assert got["precision_at_k"]["precision"][0] == pytest.approx(want["precision_at_k"][0], abs=1e-9)


def test_sampled_cutoff_and_its_fallback(monkeypatch):
    """Databases larger than the sample: the estimated cutoff is checked and fixed when short."""
    monkeypatch.setattr(ev, "_SAMPLE_COLS", 32)
    rng = np.random.default_rng(5)
    nbits, ndb, k = 10, 600, 120
    qbits = rng.random((20, nbits)) < 0.5
    # adversarial: the sampled columns are copies of query 0's code, the rest far from it
    dbits = rng.random((ndb, nbits)) < 0.5
    sampled = (np.arange(32) * ndb) // 32
    dbits[sampled] = qbits[0]
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, ndb)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    dist = hamming_distances(qp, dp)
    t = ev._cutoff_estimate(dist, k, nbits)
    assert ((dist <= t[:, None]).sum(axis=1) < k).any()  # the fallback branch is exercised
    want = reference(qbits, dbits, ql, dl, k, [1])["map"]
    assert map_at_k(qp, dp, ql, dl, bits=nbits, topk=k) == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# map_full vs sklearn, tie-aware vs exhaustive enumeration


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_map_full_equals_sklearn_without_ties(multi):
    rng = np.random.default_rng(7)
    nbits, ndb = 48, 40
    aps, ours = [], []
    for _ in range(6):
        # each query gets a database built so that its distances are all distinct
        q = rng.random(nbits) < 0.5
        dists = rng.permutation(nbits + 1)[:ndb]
        flip_order = rng.permutation(nbits)
        dbits = np.repeat(q[None], ndb, axis=0)
        for j, d in enumerate(dists):
            dbits[j, flip_order[:d]] ^= True
        if multi:
            ql = (rng.random((1, 4)) < 0.5).astype(int)
            ql[0, 0] = 1
            dl = (rng.random((ndb, 4)) < 0.3).astype(int)
            rel = (dl & ql[0]).any(axis=1)
        else:
            ql = rng.integers(0, 3, 1)
            dl = rng.integers(0, 3, ndb)
            rel = dl == ql[0]
        assert rel.any()
        res = evaluate(pack_codes(q[None]), pack_codes(dbits), ql, dl, bits=nbits)
        assert len(np.unique(hamming_distances(pack_codes(q[None]), pack_codes(dbits)))) == ndb
        assert res["map_full"] == pytest.approx(average_precision_score(rel, -dists), abs=1e-12)
        assert res["map_tie_aware"] == pytest.approx(res["map_full"], abs=1e-12)  # no ties
        assert res["map"] == pytest.approx(res["map_full"], abs=1e-12)  # K = ndb: same AP
        aps.append(average_precision_score(rel, -dists))
        ours.append(res["map_full"])
    assert np.mean(ours) == pytest.approx(np.mean(aps), abs=1e-12)


def _ap_of_order(rel_in_order):
    hits, s = 0, 0.0
    for pos, r in enumerate(rel_in_order):
        if r:
            hits += 1
            s += hits / (pos + 1)
    total = sum(rel_in_order)
    return s / total if total else 0.0


def _exhaustive_tie_mean(dist_row, rel):
    groups = [np.flatnonzero(dist_row == d) for d in np.unique(dist_row)]
    values = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate(perms)
        values.append(_ap_of_order(rel[order]))
    return float(np.mean(values))


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("nbits", [2, 3])
def test_tie_aware_equals_mean_over_all_tie_orders(nbits, multi):
    rng = np.random.default_rng(11 + nbits + 5 * multi)
    qbits, dbits, ql, dl = make_data(rng, 8, 7, nbits, multi, n_classes=3)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    dist = hamming_distances(qp, dp)
    want = np.mean([_exhaustive_tie_mean(dist[i], _relevance(ql, dl, i)) for i in range(len(ql))])
    res = evaluate(qp, dp, ql, dl, bits=nbits)
    assert res["map_tie_aware"] == pytest.approx(want, abs=1e-12)
    # and it is not just map_full: the stable order gives another value on these ties
    assert any(len(np.unique(row)) < len(row) for row in dist)


def test_tie_aware_single_group_closed_form():
    # one tie group of 4 items, 2 relevant: E[AP] = mean over the 6 placements
    res = evaluate(pack_codes(np.zeros((1, 3), bool)), pack_codes(np.zeros((4, 3), bool)),
                   np.array([1]), np.array([0, 1, 0, 1]), bits=3)
    placements = [_ap_of_order(r) for r in ([1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                                            [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1])]
    assert res["map_tie_aware"] == pytest.approx(np.mean(placements), abs=1e-12)
    assert res["map_full"] == pytest.approx(_ap_of_order([0, 1, 0, 1]), abs=1e-12)  # index order


# ---------------------------------------------------------------------------------------------
# binarize / pack / distances


def test_binarize_rules():
    real = np.array([[0.0, -0.5, 0.3, -2.0]])
    assert binarize(real).tolist() == [[True, False, True, False]]  # 0 -> bit 1
    assert binarize(np.array([[0, 1, 1, 0]])).tolist() == [[False, True, True, False]]  # bits
    assert binarize(np.array([[0.0, 1.0]])).tolist() == [[False, True]]
    assert binarize(np.array([[-1, 1, 1, -1]], dtype=np.int8)).tolist() == [[False, True, True, False]]
    assert binarize(np.array([[-1.0, 0.0, 1.0]])).tolist() == [[False, True, True]]
    b = np.array([[True, False]])
    assert binarize(b) is b
    with pytest.raises(HashbenchError):
        binarize(np.zeros(5))
    with pytest.raises(HashbenchError):
        binarize(np.array([[np.nan, 1.0]]))


def test_pack_unpack_round_trip_and_sign_codes():
    rng = np.random.default_rng(3)
    for nbits in (1, 8, 13, 64, 70):
        bits = rng.random((9, nbits)) < 0.5
        packed = pack_codes(bits)
        assert packed.dtype == np.uint8 and packed.shape == (9, (nbits + 7) // 8)
        np.testing.assert_array_equal(unpack_codes(packed, nbits), bits)
        # the same codes as {-1,+1} and as {0,1} integers pack identically
        np.testing.assert_array_equal(pack_codes(np.where(bits, 1, -1)), packed)
        np.testing.assert_array_equal(pack_codes(bits.astype(np.int64)), packed)
    with pytest.raises(HashbenchError):
        unpack_codes(pack_codes(np.zeros((2, 16), bool)), 7)


def test_hamming_distances_naive():
    rng = np.random.default_rng(4)
    for nbits in (5, 64, 70, 300):
        q = rng.random((7, nbits)) < 0.5
        d = rng.random((11, nbits)) < 0.5
        got = hamming_distances(pack_codes(q), pack_codes(d))
        naive = np.array([[sum(a != b for a, b in zip(qi, dj, strict=True)) for dj in d] for qi in q])
        np.testing.assert_array_equal(got, naive)
        assert got.dtype == (np.uint8 if (nbits + 7) // 8 * 8 <= 255 else np.uint16)


# ---------------------------------------------------------------------------------------------
# conventions


def test_ties_ordered_by_database_index():
    # all 6 database items tie at distance 0; relevant ones (class 1) sit at the END by index
    q = pack_codes(np.zeros((1, 4), bool))
    db = pack_codes(np.zeros((6, 4), bool))
    dl = np.array([0, 0, 0, 0, 1, 1])
    res = evaluate(q, db, np.array([1]), dl, bits=4, topk=6, pk_points=[1, 4])
    want = (1 / 5 + 2 / 6) / 2  # positions 5 and 6; an unstable or relevance-first order differs
    assert res["map"] == pytest.approx(want, abs=1e-12)
    assert res["map_full"] == pytest.approx(want, abs=1e-12)
    assert res["precision_at_k"]["precision"] == [0.0, 0.0]
    assert map_at_k(q, db, np.array([1]), dl, bits=4, topk=5) == pytest.approx(1 / 5, abs=1e-12)
    # with the relevant items first by index the stable answer is 1
    assert map_at_k(q, db, np.array([1]), dl[::-1].copy(), bits=4, topk=6) == 1.0


def test_deephash_convention_hand_computed():
    # distances 0..4 by construction (item j has j bits set); queries all-zero codes
    db_bits = np.array([[1] * j + [0] * (8 - j) for j in range(5)], bool)
    q = pack_codes(np.zeros((3, 8), bool))
    db = pack_codes(db_bits)
    ql = np.array([0, 1, 7])  # class 7 has no relevant item
    dl = np.array([0, 2, 0, 1, 0])
    res = evaluate(q, db, ql, dl, bits=8, topk=3)
    ap0 = (1 / 1 + 2 / 3) / 2  # hits within K=3 are 2: denominator 2, not 3
    ap1 = 0.0  # its one relevant item is at position 4, outside K: counts as 0
    ap2 = 0.0  # no relevant item at all: counts as 0
    assert res["map"] == pytest.approx((ap0 + ap1 + ap2) / 3, abs=1e-12)
    assert res["map_full"] == pytest.approx(((1 + 2 / 3 + 3 / 5) / 3 + 1 / 4 + 0) / 3, abs=1e-12)
    # radius 2 ball = items 0, 1, 2 for every query
    assert res["precision_h2"] == pytest.approx((2 / 3 + 0 + 0) / 3, abs=1e-12)
    assert res["recall_h2"] == pytest.approx((2 / 3 + 0 + 0) / 3, abs=1e-12)
    # empty ball (radius 0 for a query far from everything) counts as precision 0
    far = pack_codes(np.ones((1, 8), bool))
    r = evaluate(far, db, np.array([0]), dl, bits=8)
    assert r["pr_curve"]["precision"][0] == 0.0 and r["pr_curve"]["precision"][4] == 1.0


def test_topk_clipped_and_json():
    rng = np.random.default_rng(9)
    qbits, dbits, ql, dl = make_data(rng, 10, 40, 6, False)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    res = evaluate(qp, dp, ql, dl, bits=6, topk=10**6)
    assert res["topk"] == 40
    assert res["map"] == evaluate(qp, dp, ql, dl, bits=6, topk=None)["map"]
    assert json.loads(json.dumps(res)) == res
    assert res["precision_at_k"]["k"] == [1, 10, 40]  # default grid, capped by the database size


# ---------------------------------------------------------------------------------------------
# bad input


def _good():
    rng = np.random.default_rng(0)
    return dict(
        query_codes=pack_codes(rng.random((100, 16)) < 0.5),
        db_codes=pack_codes(rng.random((50, 16)) < 0.5),
        query_labels=rng.integers(0, 3, 100),
        db_labels=rng.integers(0, 3, 50),
        bits=16,
    )


BAD = {
    "query label count": dict(query_labels=np.zeros(99, int)),
    "db label count": dict(db_labels=np.zeros(51, int)),
    "code widths differ": dict(db_codes=np.zeros((50, 3), np.uint8)),
    "bits vs width": dict(bits=20),
    "bits zero": dict(bits=0),
    "bits too large": dict(bits=2048),
    "topk zero": dict(topk=0),
    "topk negative": dict(topk=-5),
    "topk float": dict(topk=10.0),
    "topk bool": dict(topk=True),
    "label kinds differ": dict(db_labels=np.zeros((50, 3), int)),
    "multi-hot columns differ": dict(query_labels=np.zeros((100, 3), int), db_labels=np.zeros((50, 4), int)),
    "class ids as 2-D": dict(query_labels=np.full((100, 1), 7), db_labels=np.full((50, 1), 7)),
    "float class ids": dict(query_labels=np.zeros(100)),
    "unpacked codes": dict(query_codes=np.zeros((100, 16), bool)),
    "padding bits set": dict(bits=12, query_codes=np.full((100, 2), 255, np.uint8),
                             db_codes=np.zeros((50, 2), np.uint8)),
    "empty database": dict(db_codes=np.zeros((0, 2), np.uint8), db_labels=np.zeros(0, int)),
    "1-D codes": dict(query_codes=np.zeros(200, np.uint8)),
    "bad pk_points": dict(pk_points=[0, 5]),
    "bad chunk_bytes": dict(chunk_bytes=0),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_one_line(name):
    args = {**_good(), **BAD[name]}
    with pytest.raises(HashbenchError) as err:
        evaluate(**args)
    assert "\n" not in str(err.value) and str(err.value)
    if name != "bad pk_points":
        kwargs = {k: v for k, v in args.items() if k != "pk_points"}
        kwargs.setdefault("topk", 10)
        with pytest.raises(HashbenchError):
            map_at_k(**kwargs)


def test_bad_input_messages_are_specific():
    with pytest.raises(HashbenchError, match="query codes have 100 rows but query labels have 99"):
        evaluate(**{**_good(), "query_labels": np.zeros(99, int)})
    with pytest.raises(HashbenchError, match="2 bytes wide but database codes 3"):
        hamming_distances(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# chunking and memory


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_chunking_does_not_change_results(multi):
    rng = np.random.default_rng(21)
    qbits, dbits, ql, dl = make_data(rng, 37, 300, 9, multi)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    tiny = evaluate(qp, dp, ql, dl, bits=9, topk=25, chunk_bytes=1)  # one query per chunk
    mid = evaluate(qp, dp, ql, dl, bits=9, topk=25, chunk_bytes=24 * 300 * 5)  # 5 per chunk
    big = evaluate(qp, dp, ql, dl, bits=9, topk=25, chunk_bytes=1 << 30)  # one chunk
    assert tiny == big and mid == big
    assert map_at_k(qp, dp, ql, dl, bits=9, topk=25, chunk_bytes=1) == big["map"]


def test_peak_memory_within_documented_bound():
    # worst case for the top-K candidates: 1 bit (everything ties), K = whole database
    rng = np.random.default_rng(2)
    nq, ndb, chunk_bytes = 40, 20000, 2 << 20
    qp = pack_codes(rng.random((nq, 1)) < 0.5)
    dp = pack_codes(rng.random((ndb, 1)) < 0.5)
    ql, dl = rng.integers(0, 4, nq), rng.integers(0, 4, ndb)
    tracemalloc.start()
    try:
        prob = ev._prepare(qp, dp, ql, dl, 1, None, chunk_bytes)
        retained = tracemalloc.get_traced_memory()[0]  # word copies and labels
        c = prob.chunk
        del prob
        tracemalloc.reset_peak()
        evaluate(qp, dp, ql, dl, bits=1, topk=None, chunk_bytes=chunk_bytes)
        peak = tracemalloc.get_traced_memory()[1] - retained
    finally:
        tracemalloc.stop()
    assert c == chunk_bytes // (24 * ndb) > 1
    assert peak <= 24 * c * ndb + 96 * ndb


# ---------------------------------------------------------------------------------------------
# engines: numba (when installed) and numpy give the same numbers, bit for bit

try:
    import numba  # noqa: F401
except ImportError:
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed (pip install 'hashbench[fast]')")
ENGINES = ["numpy", pytest.param("numba", marks=needs_numba)]


def _without_engine(result):
    return {k: v for k, v in result.items() if k != "engine"}


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("nbits", [1, 5, 8, 13, 64, 65, 130, 255, 256, 300, 1024])
def test_engines_equal_and_match_bruteforce(nbits, multi, monkeypatch):
    """Random cases with many ties (duplicated codes, few bits), queries without a relevant
    item, K inside a tie group, K = None and K > ndb; several database tiles and query blocks
    in the numba kernels (a tiny tile and chunk_bytes), widths not a multiple of 64 bits."""
    monkeypatch.setattr(ev, "_NUMBA_TILE_BYTES", 8)  # 64 database items per tile
    rng = np.random.default_rng(77 + nbits + 1000 * multi)
    nq, ndb = 13, 211
    qbits, dbits, ql, dl = make_data(rng, nq, ndb, nbits, multi)
    dbits[rng.integers(0, ndb, 40)] = qbits[5]  # a tie group at distance 0 for query 5
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    pk_points = [1, 7, 50, 211]
    for topk in (1, 6, 100, None, 5000):
        want = reference(qbits, dbits, ql, dl, topk, pk_points, curves=nbits <= 300)
        got = {}
        for engine in ("numpy", "numba") if HAVE_NUMBA else ("numpy",):
            for chunk_bytes in (1, 1 << 26):
                res = evaluate(qp, dp, ql, dl, bits=nbits, topk=topk, pk_points=pk_points,
                               chunk_bytes=chunk_bytes, engine=engine)
                assert res["engine"] == engine
                assert map_at_k(qp, dp, ql, dl, bits=nbits, topk=topk, chunk_bytes=chunk_bytes,
                                engine=engine) == res["map"]
                got.setdefault(engine, _without_engine(res))
                assert _without_engine(res) == got[engine]  # chunking changes nothing
        if HAVE_NUMBA:
            assert got["numba"] == got["numpy"]  # exactly, every metric and curve
        res = got["numpy"]
        for key in ("map", "map_full"):
            assert res[key] == pytest.approx(want[key], abs=1e-9), key
        np.testing.assert_allclose(res["precision_at_k"]["precision"], want["precision_at_k"], atol=1e-9)
        if nbits <= 300:
            np.testing.assert_allclose(res["pr_curve"]["precision"], want["pr_precision"], atol=1e-9)
            np.testing.assert_allclose(res["pr_curve"]["recall"], want["pr_recall"], atol=1e-9)


@needs_numba
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_engines_equal_on_a_larger_database(multi, monkeypatch):
    """Thousands of items per query: AP sums over many terms, equal to the last bit; one thread
    or several, any block size."""
    rng = np.random.default_rng(3 + multi)
    qbits, dbits, ql, dl = make_data(rng, 40, 30000, 24, multi, n_classes=7)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    want = _without_engine(evaluate(qp, dp, ql, dl, bits=24, topk=1000, engine="numpy"))
    assert _without_engine(evaluate(qp, dp, ql, dl, bits=24, topk=1000, engine="numba")) == want
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _without_engine(evaluate(qp, dp, ql, dl, bits=24, topk=1000, engine="numba",
                                    chunk_bytes=1)) == want
    for engine in ("numpy", "numba"):
        assert map_at_k(qp, dp, ql, dl, bits=24, topk=1000, engine=engine) == want["map"]


@pytest.mark.parametrize("engine", ENGINES)
def test_sampled_cutoff_fallback_each_engine(engine, monkeypatch):
    """The adversarial case of test_sampled_cutoff_and_its_fallback, on each engine."""
    monkeypatch.setattr(ev, "_SAMPLE_COLS", 32)
    rng = np.random.default_rng(5)
    nbits, ndb, k = 10, 600, 120
    qbits = rng.random((20, nbits)) < 0.5
    dbits = rng.random((ndb, nbits)) < 0.5
    dbits[(np.arange(32) * ndb) // 32] = qbits[0]
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, ndb)
    want = reference(qbits, dbits, ql, dl, k, [1], curves=False)["map"]
    got = map_at_k(pack_codes(qbits), pack_codes(dbits), ql, dl, bits=nbits, topk=k, engine=engine)
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_peak_memory_within_documented_bound_each_engine(engine):
    """test_peak_memory_within_documented_bound for each engine (the numba engine's scratch is
    within chunk_bytes; its kernels are compiled or loaded in _prepare, before the work)."""
    rng = np.random.default_rng(2)
    nq, ndb, chunk_bytes = 40, 20000, 2 << 20
    qp = pack_codes(rng.random((nq, 1)) < 0.5)
    dp = pack_codes(rng.random((ndb, 1)) < 0.5)
    ql, dl = rng.integers(0, 4, nq), rng.integers(0, 4, ndb)
    tracemalloc.start()
    try:
        prob = ev._prepare(qp, dp, ql, dl, 1, None, chunk_bytes, engine)
        retained = tracemalloc.get_traced_memory()[0]
        c = prob.chunk
        del prob
        tracemalloc.reset_peak()
        res = evaluate(qp, dp, ql, dl, bits=1, topk=None, chunk_bytes=chunk_bytes, engine=engine)
        peak = tracemalloc.get_traced_memory()[1] - retained
    finally:
        tracemalloc.stop()
    assert res["engine"] == engine
    assert peak <= 24 * c * ndb + 96 * ndb


def test_engine_choice(monkeypatch):
    q, db = pack_codes(np.zeros((2, 8), bool)), pack_codes(np.ones((3, 8), bool))
    ql, dl = np.array([0, 1]), np.array([0, 0, 1])
    monkeypatch.delenv(ev.ENGINE_ENV, raising=False)
    auto = ev.eval_engine()
    assert auto == ("numba" if HAVE_NUMBA else "numpy") == ev.eval_engine("auto") == ev.eval_engine(" Auto ")
    assert evaluate(q, db, ql, dl, bits=8)["engine"] == auto
    monkeypatch.setenv(ev.ENGINE_ENV, "numpy")
    assert ev.eval_engine() == "numpy" and evaluate(q, db, ql, dl, bits=8)["engine"] == "numpy"
    assert evaluate(q, db, ql, dl, bits=8, engine="auto")["engine"] == auto  # the argument wins
    monkeypatch.setenv(ev.ENGINE_ENV, "")
    assert ev.eval_engine() == auto  # empty = unset
    monkeypatch.setenv(ev.ENGINE_ENV, "cuda")
    with pytest.raises(HashbenchError, match=r"\$HASHBENCH_EVAL_ENGINE must be one of auto, numba, numpy, got 'cuda'"):
        evaluate(q, db, ql, dl, bits=8)
    with pytest.raises(HashbenchError, match="engine must be one of"):
        map_at_k(q, db, ql, dl, bits=8, topk=1, engine="fast")
    # without numba: auto falls back to numpy, asking for numba says how to install it
    monkeypatch.delenv(ev.ENGINE_ENV)
    monkeypatch.setattr(ev, "_numba_kernels", lambda: "No module named 'numba'")
    assert ev.eval_engine() == "numpy" and evaluate(q, db, ql, dl, bits=8)["engine"] == "numpy"
    with pytest.raises(HashbenchError, match=r"pip install 'hashbench\[fast\]'"):
        evaluate(q, db, ql, dl, bits=8, engine="numba")


def test_numpy_engine_without_numba_installed(tmp_path):
    """With numba unimportable, hashbench.evaluate (and the kernel module) import, auto runs
    numpy, and the numbers are those of a run with numba."""
    script = (
        "import sys, json; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "import hashbench._evaluate_numba as k; assert not k.AVAILABLE\n"
        "from hashbench.evaluate import evaluate, pack_codes, eval_engine\n"
        "rng = np.random.default_rng(0)\n"
        "q, d = pack_codes(rng.random((20, 12)) < 0.5), pack_codes(rng.random((300, 12)) < 0.5)\n"
        "print(json.dumps(evaluate(q, d, rng.integers(0, 3, 20), rng.integers(0, 3, 300), bits=12, topk=50)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, check=True)
    res = json.loads(out.stdout)
    assert res["engine"] == "numpy"
    rng = np.random.default_rng(0)
    q, d = pack_codes(rng.random((20, 12)) < 0.5), pack_codes(rng.random((300, 12)) < 0.5)
    here = evaluate(q, d, rng.integers(0, 3, 20), rng.integers(0, 3, 300), bits=12, topk=50)
    assert _without_engine(res) == _without_engine(here)


@needs_numba
@pytest.mark.parametrize("nbits, multi", [(10, False), (10, True), (100, False)], ids=["single", "multi", "2words"])
def test_numba_sampled_top_k_and_its_redos(nbits, multi, monkeypatch):
    """numba map_at_k for K << ndb keeps only the items within a sampled cutoff; a query whose
    cutoff keeps fewer than K items (sample underestimated) or more than the room for
    candidates is redone exactly. All three happen here, and every answer is the reference's."""
    monkeypatch.setattr(ev, "_SAMPLE_COLS", 32)
    monkeypatch.setattr(ev, "_CANDIDATES_PER_K", 4)
    monkeypatch.setattr(ev, "_NUMBA_TILE_BYTES", 8)  # several tiles
    rng = np.random.default_rng(nbits + multi)
    nq, ndb, k = 24, 900, 60
    qbits, dbits, ql, dl = make_data(rng, nq, ndb, nbits, multi)
    sampled = (np.arange(32) * ndb) // 32
    dbits[sampled] = qbits[0]  # query 0: the sample says "all near", the rest is not
    dbits[rng.integers(0, ndb, 300)] = qbits[1]  # query 1: ~260 items at distance 0 > room (240)
    qp, dp = pack_codes(qbits), pack_codes(dbits)
    room = max(4 * k, ndb // 64)
    assert ev._sample_plan(ndb, k)[0] == 32 and 2 * room <= ndb  # sampled mode
    dist = hamming_distances(qp, dp)
    kept = (dist <= ev._cutoff_estimate(dist, k, nbits)[:, None]).sum(axis=1)
    assert kept[0] < k and kept[1] > room and ((kept >= k) & (kept <= room)).any()
    want = reference(qbits, dbits, ql, dl, k, [1], curves=False)["map"]
    got = map_at_k(qp, dp, ql, dl, bits=nbits, topk=k, engine="numba")
    assert got == map_at_k(qp, dp, ql, dl, bits=nbits, topk=k, engine="numpy")
    assert got == evaluate(qp, dp, ql, dl, bits=nbits, topk=k, engine="numba")["map"]
    assert got == pytest.approx(want, abs=1e-12)
