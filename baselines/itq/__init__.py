"""ITQ: Iterative Quantization (Gong & Lazebnik, CVPR 2011; Gong et al., TPAMI 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench import hookimpl
from hashbench.components import HashMethod, Split
from hashbench.params import param

from .. import _linear


class ITQ(HashMethod):
    """PCA to ``bits`` dimensions, then a rotation R that minimizes ``||B - V R||_F^2``.

    ``V`` (N, bits) is the centered PCA projection of the training data. Starting from a random
    orthogonal R drawn from ``self.rng``, each of ``iterations`` steps sets B = sign(V R) and then
    R to the orthogonal Procrustes solution (SVD of V^T B), as in the authors' code.

    Fitted state: ``mean_`` (D,), ``components_`` (D, bits), ``rotation_`` (bits, bits)
    orthogonal, ``loss_history_`` float64 (iterations + 1,): entry t is the quantization loss of
    the t-th rotation (entry 0: the random start, last: the returned rotation); it never
    increases. Needs bits <= min(D, number of training items).
    """

    name = "itq"
    summary = "Iterative Quantization: PCA + learned rotation (Gong & Lazebnik, CVPR 2011)"
    input = "features"

    @dataclass(frozen=True)
    class Config:
        iterations: int = param(50, ge=0, doc="alternating rotation/code updates")

    rotation_: np.ndarray | None = None

    def fit(self, train: Split, val: Split | None = None) -> None:
        """Fit PCA on ``train.x`` (N, D) and learn the rotation; consumes ``self.rng``."""
        x = _linear.check_features(train.x, self.name)
        _linear.check_pca_bits(self.name, self.bits, *x.shape)
        self.dim_ = x.shape[1]
        self.mean_, self.components_ = _linear.fit_pca(x, self.bits, self.name)
        v = _linear.project(x, self.components_, self.mean_, self.name)
        rotation = _linear.random_rotation(self.bits, self.rng)
        losses = []
        for _ in range(self.config.iterations):
            z = v @ rotation
            b = np.where(z >= 0, 1.0, -1.0)
            losses.append(float(np.sum((b - z) ** 2)))
            # Procrustes: maximize tr(R^T V^T B) -> V^T B = U S W^T, R = U W^T
            u, _, wt = np.linalg.svd(v.T @ b)
            rotation = u @ wt
        losses.append(_linear.quantization_loss(v @ rotation))
        self.rotation_ = rotation
        self.loss_history_ = np.asarray(losses)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Map float (N, D) to bool (N, bits): True where the rotated projection is >= 0."""
        _linear.require_fitted(self, "rotation_")
        x = _linear.check_features(x, self.name, self.dim_)
        v = _linear.project(x, self.components_, self.mean_, self.name)
        return _linear.sign_bits(v @ self.rotation_)

    def encoder(self):
        """The torch module of ``encode`` (float features (B, D) -> bool (B, bits)), for export."""
        from .._torch import ProjectionSign

        _linear.require_fitted(self, "rotation_")
        return ProjectionSign(self.components_, self.mean_, self.rotation_)


@hookimpl
def register_methods():
    return [ITQ]
