"""SH: Spectral Hashing (Weiss, Torralba & Fergus, NIPS 2008)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench import hookimpl
from hashbench.components import HashMethod, Split
from hashbench.errors import HashbenchError
from hashbench.params import param

from .. import _linear


class SH(HashMethod):
    """Spectral Hashing as in the authors' reference code (trainSH.m / compressSH.m).

    PCA to ``npca = pca_dim or min(bits, D)`` dimensions (or fewer if there are fewer
    training items); per PCA dimension d the training
    range [mn_d, mx_d] (widened by machine epsilon on each side, as the reference does); the
    one-dimensional eigenfunctions of a uniform distribution on it, sin(pi/2 + omega (x - mn_d))
    with omega = k pi / (mx_d - mn_d), k >= 1; keep the ``bits`` modes with the smallest omega
    (stable order: PCA dimension, then k) and threshold each at 0 (>= 0 -> True).

    Fitted state: ``mean_`` (D,), ``components_`` (D, npca), ``mn_``/``mx_`` float64 (npca,),
    ``modes_`` int64 (bits, npca) (row j: k in the one dimension bit j uses, 0 elsewhere, as in
    the reference), ``omegas_`` float64 (bits,) ascending. Deterministic (no randomness).
    """

    name = "sh"
    summary = "Spectral Hashing: PCA + 1-D Laplacian eigenfunctions (Weiss, Torralba & Fergus, NIPS 2008)"
    input = "features"

    @dataclass(frozen=True)
    class Config:
        pca_dim: int | None = param(None, ge=1, doc="PCA dimensions; None = min(bits, D) as the reference code")

    modes_: np.ndarray | None = None

    def fit(self, train: Split, val: Split | None = None) -> None:
        """Fit PCA, the per-dimension ranges and the modes on ``train.x`` (N, D)."""
        x = _linear.check_features(train.x, self.name)
        n, d = x.shape
        npca = self.config.pca_dim or min(self.bits, d, n)
        _linear.check_pca_bits(self.name, npca, n, d, what="the PCA dimension")
        self.dim_ = d
        self.mean_, self.components_ = _linear.fit_pca(x, npca, self.name)
        v = _linear.project(x, self.components_, self.mean_, self.name)
        low, high = v.min(axis=0), v.max(axis=0)
        if not np.any(high > low):
            raise HashbenchError(f"{self.name}: the training features are constant; nothing to hash")
        eps = np.finfo(np.float64).eps
        self.mn_, self.mx_ = low - eps, high + eps
        # Candidates k = 1..bits per dimension suffice: the bits smallest omegas overall use at
        # most bits modes of one dimension, and those are its k = 1..m.
        ks = np.arange(1, self.bits + 1)
        omega0 = np.pi / (self.mx_ - self.mn_)
        cand_omega = (omega0[:, None] * ks[None, :]).ravel()  # dimension-major, then k
        cand_dim = np.repeat(np.arange(npca), self.bits)
        cand_k = np.tile(ks, npca)
        order = np.argsort(cand_omega, kind="stable")[: self.bits]
        self.modes_ = np.zeros((self.bits, npca), dtype=np.int64)
        self.modes_[np.arange(self.bits), cand_dim[order]] = cand_k[order]
        self.omegas_ = cand_omega[order]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Map float (N, D) to bool (N, bits): True where the bit's eigenfunction is >= 0."""
        _linear.require_fitted(self, "modes_")
        x = _linear.check_features(x, self.name, self.dim_)
        v = _linear.project(x, self.components_, self.mean_, self.name)
        dims = np.argmax(self.modes_ != 0, axis=1)  # the one PCA dimension of each bit
        return _linear.sign_bits(np.sin(np.pi / 2 + (v[:, dims] - self.mn_[dims]) * self.omegas_))

    def encoder(self):
        """The torch module of ``encode`` (float features (B, D) -> bool (B, bits)), for export."""
        from .._torch import SpectralSign

        _linear.require_fitted(self, "modes_")
        dims = np.argmax(self.modes_ != 0, axis=1)
        return SpectralSign(self.components_, self.mean_, dims, self.mn_[dims], self.omegas_)


@hookimpl
def register_methods():
    return [SH]
