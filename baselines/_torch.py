"""The shallow baselines' code functions as torch modules (what ``hashbench export`` traces).

Each computes in float64, step by step as the numpy ``encode`` of its method does, so its
codes equal ``encode``'s bit for bit (a value would have to fall within float64 rounding of 0
to differ). Input: float features (B, D) (float32 as the runner gives them); output: bool (B, bits).

Imported only when a method is exported (this module imports torch at module level).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _buffer(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


class ProjectionSign(nn.Module):
    """``((x - mean) @ weights) [@ rotation] >= 0`` in float64 (LSH: no mean; PCAH; ITQ: rotation).

    weights (D, K), mean (D,) or None, rotation (K, bits) or None."""

    def __init__(self, weights: np.ndarray, mean: np.ndarray | None = None, rotation: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("weights", _buffer(weights))
        self.register_buffer("mean", _buffer(mean if mean is not None else np.zeros(weights.shape[0])))
        self.centre = mean is not None
        self.register_buffer("rotation", _buffer(rotation) if rotation is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.to(torch.float64)
        if self.centre:
            v = v - self.mean
        v = v @ self.weights
        if self.rotation is not None:
            v = v @ self.rotation
        return v >= 0


class SpectralSign(nn.Module):
    """Spectral hashing's bits: ``sin(pi/2 + (v[:, dims] - low) * omegas) >= 0`` with
    ``v = (x - mean) @ components`` (float64); dims int (bits,), low and omegas (bits,)."""

    def __init__(self, components: np.ndarray, mean: np.ndarray, dims: np.ndarray, low: np.ndarray,
                 omegas: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("components", _buffer(components))
        self.register_buffer("mean", _buffer(mean))
        self.register_buffer("dims", torch.from_numpy(np.asarray(dims, dtype=np.int64)))
        self.register_buffer("low", _buffer(low))
        self.register_buffer("omegas", _buffer(omegas))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x.to(torch.float64) - self.mean) @ self.components
        return torch.sin(math.pi / 2 + (v[:, self.dims] - self.low) * self.omegas) >= 0
