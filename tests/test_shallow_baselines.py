"""Tests of the shallow baselines lsh, pcah, itq and sh (hashbench.baselines.*).

Methods are built with ``hashbench.create``, i.e. through their entry points and
``register_methods`` hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

import hashbench
from hashbench.components import HashMethod, Split
from hashbench.errors import HashbenchError
from hashbench.registry import registry

BASELINES = ("itq", "lsh", "pcah", "sh")
RANDOM = ("itq", "lsh")
PCA_BASED = ("itq", "pcah")
EPS = np.finfo(np.float64).eps


def make(name: str, bits: int, seed: int = 0, **params) -> HashMethod:
    return hashbench.create("method", name, bits=bits, seed=seed, **params)


def split(x: np.ndarray, labels: np.ndarray | None = None) -> Split:
    labels = np.zeros(len(x), dtype=np.int64) if labels is None else labels
    return Split(x=x, labels=labels, index=np.arange(len(x), dtype=np.int64))


def gaussian(n: int, d: int, seed: int) -> np.ndarray:
    """Anisotropic Gaussian data (distinct variances, so principal directions are well defined)."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.5, d)
    mixing = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return (rng.standard_normal((n, d)) * scales) @ mixing.T + 2.0


def blobs(n: int, d: int, classes: int, seed: int, separation: float = 4.0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)) * separation
    labels = rng.integers(0, classes, size=n)
    return centers[labels] + rng.standard_normal((n, d)), labels


def fitted(name: str, x: np.ndarray, bits: int = 16, seed: int = 0, **params) -> HashMethod:
    method = make(name, bits, seed, **params)
    method.fit(split(x), None)
    return method


def flips_to_match(reference: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Columns of ``reference`` flipped wherever that makes them agree better with ``codes``."""
    flip = (reference != codes).mean(axis=0) > 0.5
    return reference ^ flip


X = gaussian(400, 24, seed=1)
X_OTHER = gaussian(150, 24, seed=2)  # items not seen in training


# ----------------------------------------------------------------------------- plugin wiring

def test_each_baseline_is_its_own_plugin():
    assert set(BASELINES) <= set(hashbench.names("method"))
    plugins = {registry("method").entry(name).plugin for name in BASELINES}
    assert len(plugins) == len(BASELINES)  # one plugin (entry point) each
    for name in BASELINES:
        entry = registry("method").entry(name)
        assert entry.plugin.rsplit(".", 1)[-1] == name
        assert issubclass(entry.cls, HashMethod) and entry.cls.name == name
        assert entry.cls.input == "features" and entry.cls.summary
        assert entry.cls.__module__ == f"hashbench.baselines.{name}"
        method = make(name, 16, seed=3)
        assert type(method) is entry.cls and method.bits == 16 and method.seed == 3


def test_parameters_are_checked():
    assert make("itq", 8).config.iterations == 50
    with pytest.raises(HashbenchError, match="iterations"):
        make("itq", 8, iterations=-1)
    with pytest.raises(HashbenchError, match="no parameter 'iteration'"):
        make("itq", 8, iteration=3)
    with pytest.raises(HashbenchError, match="pca_dim"):
        make("sh", 8, pca_dim=0)
    with pytest.raises(HashbenchError):
        make("lsh", 8, iterations=3)


# ----------------------------------------------------------------------------- common contract

@pytest.mark.parametrize("name", BASELINES)
def test_codes_are_bool_items_by_bits(name):
    method = fitted(name, X.astype(np.float32), bits=16)
    codes = method.encode(X_OTHER)
    assert codes.dtype == np.bool_ and codes.shape == (len(X_OTHER), 16)
    assert 0.05 < codes.mean() < 0.95  # not constant
    assert method.encode(X_OTHER[:0]).shape == (0, 16)


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_codes(name):
    a = fitted(name, X, bits=16, seed=7).encode(X_OTHER)
    b = fitted(name, X, bits=16, seed=7).encode(X_OTHER)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", RANDOM)
def test_random_methods_depend_on_the_seed(name):
    a = fitted(name, X, bits=16, seed=0).encode(X_OTHER)
    b = fitted(name, X, bits=16, seed=1).encode(X_OTHER)
    assert (a != b).any()


@pytest.mark.parametrize("name", BASELINES)
def test_encode_before_fit_raises(name):
    with pytest.raises(HashbenchError, match="before encode"):
        make(name, 8).encode(X)


@pytest.mark.parametrize("name", BASELINES)
def test_wrong_input_raises(name):
    method = fitted(name, X, bits=8)
    with pytest.raises(HashbenchError, match="24-dimensional"):
        method.encode(X[:, :-1])
    with pytest.raises(HashbenchError, match=r"shape \(N, D\)"):
        method.encode(X[0])
    bad = X_OTHER.copy()
    bad[3, 4] = np.nan
    with pytest.raises(HashbenchError, match="NaN"):
        method.encode(bad)


@pytest.mark.parametrize("name", PCA_BASED)
def test_too_many_bits_raise(name):
    with pytest.raises(HashbenchError, match=rf"{name} needs bits <= 24 \(the feature dimension\)"):
        fitted(name, X, bits=25)
    with pytest.raises(HashbenchError, match=rf"{name} needs bits <= 10 \(the number of training items\)"):
        fitted(name, X[:10], bits=16)
    fitted(name, X, bits=24)  # the limit itself works


# ----------------------------------------------------------------------------- LSH

def test_lsh_ignores_the_training_data():
    a = fitted("lsh", X, bits=32, seed=3)
    b = fitted("lsh", 100.0 * X_OTHER[:5] - 7.0, bits=32, seed=3)
    np.testing.assert_array_equal(a.encode(X_OTHER), b.encode(X_OTHER))


def test_lsh_is_sign_of_uncentered_projection():
    method = fitted("lsh", X, bits=32)
    w = method.projections_
    assert w.shape == (24, 32)
    np.testing.assert_array_equal(method.encode(X_OTHER), X_OTHER @ w >= 0)


# ----------------------------------------------------------------------------- PCAH

def test_pcah_matches_sklearn_pca_up_to_component_signs():
    bits = 12
    method = fitted("pcah", X, bits=bits)
    pca = PCA(n_components=bits, svd_solver="full").fit(X)
    projection = (X_OTHER - pca.mean_) @ pca.components_.T
    expected = projection >= 0
    codes = method.encode(X_OTHER)
    expected = flips_to_match(expected, codes)
    clear = np.abs(projection) > 1e-9  # ignore items on a hyperplane (none expected)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(codes[clear], expected[clear])
    np.testing.assert_allclose(np.abs(method.components_.T @ pca.components_.T), np.eye(bits), atol=1e-8)


# ----------------------------------------------------------------------------- ITQ

def test_itq_rotation_is_orthogonal_and_loss_decreases():
    method = fitted("itq", X, bits=16, iterations=30)
    r = method.rotation_
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-8)
    history = method.loss_history_
    assert history.shape == (31,)
    assert np.all(np.diff(history) <= 1e-9 * history[0])
    assert history[-1] < history[0]


def test_itq_loss_is_below_pcah_and_codes_follow_the_rotation():
    itq = fitted("itq", X, bits=16)
    pcah = fitted("pcah", X, bits=16)
    v = (X - pcah.mean_) @ pcah.components_  # PCAH is ITQ with R = I on the same projection
    np.testing.assert_allclose(np.abs(itq.components_.T @ pcah.components_), np.eye(16), atol=1e-8)
    pcah_loss = np.sum((np.where(v >= 0, 1.0, -1.0) - v) ** 2)
    itq_v = (X - itq.mean_) @ itq.components_ @ itq.rotation_
    itq_loss = np.sum((np.where(itq_v >= 0, 1.0, -1.0) - itq_v) ** 2)
    assert itq_loss == pytest.approx(itq.loss_history_[-1], rel=1e-9)
    assert itq_loss < 0.95 * pcah_loss
    np.testing.assert_array_equal(itq.encode(X), itq_v >= 0)


# ----------------------------------------------------------------------------- SH

def sh_reference_codes(method, x: np.ndarray) -> np.ndarray:
    """compressSH.m: product over PCA dimensions of sin(pi/2 + omega (x - mn)), then > 0."""
    npca = method.modes_.shape[1]
    pca = PCA(n_components=npca, svd_solver="full").fit(X)
    components = pca.components_.T * np.sign(np.sum(pca.components_.T * method.components_, axis=0))
    v_train = (X - pca.mean_) @ components
    mn, mx = v_train.min(axis=0) - EPS, v_train.max(axis=0) + EPS
    np.testing.assert_allclose(method.mn_, mn, atol=1e-9)
    np.testing.assert_allclose(method.mx_, mx, atol=1e-9)
    omegas = method.modes_ * (np.pi / (mx - mn))  # (bits, npca)
    v = (x - pca.mean_) @ components - mn
    values = np.prod(np.sin(v[:, None, :] * omegas[None, :, :] + np.pi / 2), axis=2)
    return values


@pytest.mark.parametrize("bits", [8, 48])  # 48 > D = 24: several modes per PCA dimension
def test_sh_codes_are_the_chosen_eigenfunctions(bits):
    method = fitted("sh", X, bits=bits)
    npca = min(bits, 24)
    assert method.modes_.shape == (bits, npca)
    assert np.all(np.count_nonzero(method.modes_, axis=1) == 1)  # one dimension per bit
    values = sh_reference_codes(method, X_OTHER)
    codes = method.encode(X_OTHER)
    assert codes.shape == (len(X_OTHER), bits)
    clear = np.abs(values) > 1e-9
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(codes[clear], (values >= 0)[clear])
    if bits > 24:
        assert method.modes_.max() > 1  # some dimension uses a higher mode
        assert len({tuple(row) for row in method.modes_}) == bits  # no mode twice


@pytest.mark.parametrize("bits", [8, 48])
def test_sh_chooses_the_smallest_frequencies(bits):
    method = fitted("sh", X, bits=bits)
    ranges = method.mx_ - method.mn_
    ks = np.arange(1, bits + 2)
    all_omegas = np.sort((ks[None, :] * np.pi / ranges[:, None]).ravel())
    chosen = np.pi * method.modes_.max(axis=1) / ranges[np.argmax(method.modes_, axis=1)]
    np.testing.assert_allclose(np.sort(chosen), all_omegas[:bits], rtol=1e-12)
    np.testing.assert_allclose(method.omegas_, chosen, rtol=1e-12)
    assert np.all(np.diff(method.omegas_) >= 0)


def test_sh_pca_dim_option_and_few_training_items():
    method = fitted("sh", X, bits=16, pca_dim=4)
    assert method.modes_.shape == (16, 4) and method.components_.shape == (24, 4)
    assert method.encode(X_OTHER).shape == (len(X_OTHER), 16)
    few = fitted("sh", X[:6], bits=16)  # default PCA dimension is capped by the 6 items
    assert few.modes_.shape == (16, 6) and few.encode(X_OTHER).shape == (len(X_OTHER), 16)
    with pytest.raises(HashbenchError, match="PCA dimension <= 24"):
        fitted("sh", X, bits=8, pca_dim=30)


# ----------------------------------------------------------------------------- retrieval

def mean_average_precision(query_codes, query_labels, db_codes, db_labels) -> float:
    """mAP over the whole database, Hamming ranking with ties broken by database order."""
    distances = (query_codes[:, None, :] != db_codes[None, :, :]).sum(axis=2)
    order = np.argsort(distances, axis=1, kind="stable")
    relevant = db_labels[order] == query_labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, db_codes.shape[0] + 1)
    precision_at_hits = np.where(relevant, hits / ranks, 0.0)
    return float(np.mean(precision_at_hits.sum(axis=1) / np.maximum(relevant.sum(axis=1), 1)))


def test_itq_beats_lsh_on_separated_blobs():
    x, labels = blobs(2400, 64, classes=10, seed=5, separation=1.5)
    train, query, db = slice(0, 1000), slice(1000, 1200), slice(1200, 2400)
    scores = {}
    for name in ("itq", "lsh"):
        method = make(name, 16, seed=0)
        method.fit(split(x[train], labels[train]), None)
        scores[name] = mean_average_precision(
            method.encode(x[query]), labels[query], method.encode(x[db]), labels[db]
        )
    assert scores["itq"] > 0.9 and scores["itq"] > scores["lsh"] + 0.2, scores
