"""Linear algebra and input checks shared by the shallow baselines (lsh, pcah, itq, sh).

Everything works in float64 and in row chunks, so a float32 (N, D) input is never copied whole.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from hashbench.errors import HashbenchError

#: rows per chunk when projecting or accumulating a covariance
CHUNK = 8192


def check_features(x: np.ndarray, who: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as an array of real features (N, D), checking D against ``dim`` if given.

    Raises a one-line :class:`HashbenchError` for a non-2-D, non-numeric or wrong-width input.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise HashbenchError(f"{who} expects features of shape (N, D), got an array of shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise HashbenchError(f"{who} expects real-valued features, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise HashbenchError(
            f"{who} was fitted on {dim}-dimensional features but got {x.shape[1]}-dimensional ones"
        )
    return x


def _chunks(x: np.ndarray, who: str):
    """Yield (start, float64 chunk) over the rows of ``x``; raise if a value is NaN or infinite."""
    for start in range(0, len(x), CHUNK):
        chunk = np.asarray(x[start:start + CHUNK], dtype=np.float64)
        if not np.isfinite(chunk).all():
            raise HashbenchError(f"{who}: the features contain NaN or infinite values")
        yield start, chunk


def check_pca_bits(who: str, k: int, n: int, d: int, what: str = "bits") -> None:
    """Raise unless ``k`` principal directions can be fitted on ``n`` items of dimension ``d``."""
    if n < 2:
        raise HashbenchError(f"{who} needs at least 2 training items to fit PCA, got {n}")
    if k > d:
        raise HashbenchError(
            f"{who} needs {what} <= {d} (the feature dimension), got {k}; use fewer bits or another method"
        )
    if k > n:
        raise HashbenchError(
            f"{who} needs {what} <= {n} (the number of training items), got {k}; use fewer bits or more data"
        )


def fit_pca(x: np.ndarray, k: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA on ``x`` (N, D): return ``mean`` float64 (D,) and ``components`` float64 (D, k).

    The columns of ``components`` are orthonormal, ordered by decreasing variance; each one's
    sign is fixed so that its entry of largest magnitude is positive (deterministic output).
    The caller checks ``k`` first (:func:`check_pca_bits`).
    """
    n, d = x.shape
    mean = np.zeros(d)
    for _, chunk in _chunks(x, who):
        mean += chunk.sum(axis=0)
    mean /= n
    cov = np.zeros((d, d))
    for _, chunk in _chunks(x, who):
        centered = chunk - mean
        cov += centered.T @ centered
    cov /= n - 1
    # eigh returns ascending eigenvalues: take the top k and reverse them.
    _, vecs = scipy.linalg.eigh(cov, subset_by_index=[d - k, d - 1])
    components = vecs[:, ::-1]
    largest = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[largest, np.arange(k)])
    signs[signs == 0] = 1.0
    return mean, np.ascontiguousarray(components * signs)


def project(x: np.ndarray, weights: np.ndarray, mean: np.ndarray | None, who: str) -> np.ndarray:
    """Return ``(x - mean) @ weights`` as float64 (N, K); ``mean=None`` projects ``x`` itself.

    ``x`` is (N, D), ``weights`` (D, K), ``mean`` (D,). Computed in row chunks.
    """
    out = np.empty((len(x), weights.shape[1]))
    for start, chunk in _chunks(x, who):
        if mean is not None:
            chunk = chunk - mean
        out[start:start + len(chunk)] = chunk @ weights
    return out


def sign_bits(values: np.ndarray) -> np.ndarray:
    """Bool codes of the same shape: True where ``values >= 0`` (bit 1), False elsewhere."""
    return values >= 0


def quantization_loss(v: np.ndarray) -> float:
    """ITQ's quantization loss ``||B - V||_F^2`` with ``B = sign(V)`` in {-1, +1} (0 maps to +1)."""
    b = np.where(v >= 0, 1.0, -1.0)
    return float(np.sum((b - v) ** 2))


def random_rotation(k: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal (k, k) matrix, Haar-distributed, drawn from ``rng``."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def require_fitted(method, attribute: str) -> None:
    """Raise a one-line error if ``method`` has no ``attribute`` yet (encode before fit)."""
    if getattr(method, attribute, None) is None:
        raise HashbenchError(f"{method.name}: call fit(train) before encode(x)")
