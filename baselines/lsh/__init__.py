"""LSH: random-hyperplane hashing (Charikar, STOC 2002; "SimHash")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench import hookimpl
from hashbench.components import HashMethod, Split

from .. import _linear


class LSH(HashMethod):
    """Random hyperplanes through the origin: bit j = [x . w_j >= 0], w_j ~ N(0, I).

    Data-independent by design: ``fit`` only reads the feature dimension D of ``train.x`` and
    draws ``projections_`` (D, bits) from ``self.rng``; the training values are ignored, and the
    data is NOT centered (centering on the train mean would make it data-dependent). On features
    that are far from the origin (e.g. non-negative CNN activations) the bits are therefore
    correlated; that is the baseline as published. Same seed and D give the same codes.
    """

    name = "lsh"
    summary = "Random-hyperplane LSH / SimHash, data-independent (Charikar, STOC 2002)"
    input = "features"

    @dataclass(frozen=True)
    class Config:
        pass

    projections_: np.ndarray | None = None

    def fit(self, train: Split, val: Split | None = None) -> None:
        """Draw Gaussian projections (D, bits) for the D of ``train.x``; nothing else is learned."""
        x = _linear.check_features(train.x, self.name)
        self.dim_ = x.shape[1]
        self.projections_ = self.rng.standard_normal((self.dim_, self.bits))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Map float (N, D) to bool (N, bits): True where the projection is >= 0."""
        _linear.require_fitted(self, "projections_")
        x = _linear.check_features(x, self.name, self.dim_)
        return _linear.sign_bits(_linear.project(x, self.projections_, None, self.name))

    def encoder(self):
        """The torch module of ``encode`` (float features (B, D) -> bool (B, bits)), for export."""
        from .._torch import ProjectionSign

        _linear.require_fitted(self, "projections_")
        return ProjectionSign(self.projections_)


@hookimpl
def register_methods():
    return [LSH]
