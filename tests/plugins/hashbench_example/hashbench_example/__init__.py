"""An example third-party hashbench plugin: no line of hashbench is edited to add it.

* augmentation recipe ``example-noise``: a random resized crop (scale 0.7-1) and Gaussian pixel
  noise (std 0.05), clipped to [0, 1]; a deep method takes it with ``--set METHOD.augment=example-noise``;
* executor ``serial-shuffled``: runs the grid in this process, one run after another, in the
  order of a seeded shuffle; its option ``--shuffle-seed N`` comes from its Config field
  ``shuffle_seed`` (``hashbench run --help`` lists it under "executor options").

torch is imported inside ``transform`` only: the registry imports this module at every command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hashbench import hookimpl
from hashbench.augment import Recipe
from hashbench.components import Executor
from hashbench.params import param


class NoisyCrop(Recipe):
    """A random resized crop, then Gaussian pixel noise, clipped to [0, 1]."""

    name = "example-noise"
    summary = "example plugin: random resized crop (scale 0.7-1) + Gaussian pixel noise (std 0.05)"
    version = 1  # bump when transform changes: cached view banks of another version are not reused

    def transform(self, size: int) -> Callable[[Any], Any]:
        """float32 (3, size, size) in [0, 1] -> the same; randomness from torch's global generator."""
        import torch
        from torchvision.transforms import v2

        crop = v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True)

        def noisy_crop(image: torch.Tensor) -> torch.Tensor:
            out = crop(image)
            return (out + 0.05 * torch.randn_like(out)).clamp_(0.0, 1.0)

        return noisy_crop


class SerialShuffled(Executor):
    """Runs the tasks in this process, one after another, in a seeded random order."""

    name = "serial-shuffled"
    summary = "example plugin: the grid in this process, one run after another, in a seeded random order"

    @dataclass(frozen=True)
    class Config:
        shuffle_seed: int = param(0, ge=0, doc="seed of the order the runs go in")

    def order(self, n: int) -> list[int]:
        """The positions of ``n`` tasks in the order they run: a permutation seeded by ``shuffle_seed``."""
        return np.random.default_rng(self.config.shuffle_seed).permutation(n).tolist()

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        tasks = list(tasks)
        for i in self.order(len(tasks)):
            yield fn(tasks[i])


@hookimpl
def register_augmentations():
    return [NoisyCrop]


@hookimpl
def register_executors():
    return [SerialShuffled]
