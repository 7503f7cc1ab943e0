"""PCAH: PCA hashing, thresholding the top principal components at 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench import hookimpl
from hashbench.components import HashMethod, Split

from .. import _linear


class PCAH(HashMethod):
    """Center on the train mean, project on the top-``bits`` principal directions, threshold at 0.

    Fitted state: ``mean_`` float64 (D,), ``components_`` float64 (D, bits) with orthonormal
    columns by decreasing variance. Deterministic (no randomness). Needs
    bits <= min(D, number of training items).
    """

    name = "pcah"
    summary = "PCA hashing: sign of the top principal components (e.g. Wang, Kumar & Chang, TPAMI 2012)"
    input = "features"

    @dataclass(frozen=True)
    class Config:
        pass

    components_: np.ndarray | None = None

    def fit(self, train: Split, val: Split | None = None) -> None:
        """Fit the train mean and top-``bits`` principal directions of ``train.x`` (N, D)."""
        x = _linear.check_features(train.x, self.name)
        _linear.check_pca_bits(self.name, self.bits, *x.shape)
        self.dim_ = x.shape[1]
        self.mean_, self.components_ = _linear.fit_pca(x, self.bits, self.name)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Map float (N, D) to bool (N, bits): True where the centered projection is >= 0."""
        _linear.require_fitted(self, "components_")
        x = _linear.check_features(x, self.name, self.dim_)
        return _linear.sign_bits(_linear.project(x, self.components_, self.mean_, self.name))

    def encoder(self):
        """The torch module of ``encode`` (float features (B, D) -> bool (B, bits)), for export."""
        from .._torch import ProjectionSign

        _linear.require_fitted(self, "components_")
        return ProjectionSign(self.components_, self.mean_)


@hookimpl
def register_methods():
    return [PCAH]
