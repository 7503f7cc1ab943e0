"""Augmentation recipes (a registry kind) and two independently augmented views of a batch.

A recipe is a :class:`Recipe` component, registered through the ``register_augmentations``
hook (the built-ins below register exactly as a plugin's do); a deep method names one in its
``augment`` field (``hashbench list augmentations``). ``Recipe.transform(S)`` is the per-image
transform of a float (3, S, S) image in [0, 1] at the backbone's input size S;
:class:`Augmenter` applies it image by image (each image gets its own random parameters), then
normalizes with the backbone's data-config mean and std.

Randomness is reproducible: every call takes an explicit ``seed`` and runs inside
``torch.random.fork_rng`` with ``torch.manual_seed(seed)`` (the v2 transforms draw from torch's
global generator only), so the same seed gives the same views on CPU and the global generator
is left untouched.

A recipe's ``version`` is part of the view bank's cache key (:mod:`hashbench.banks`): bump it
when the transform changes, so that cached banks of the old transform are not reused.

Built-in recipes (:data:`RECIPES`, version :data:`RECIPE_VERSION`):

* ``cibhash``: CIBHash's code: RandomResizedCrop(S, scale 0.5-1), horizontal flip,
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.7, grayscale p=0.2, GaussianBlur(k=3, sigma
  0.1-2) with p=0.5.
* ``mocov2``: MoCo v2: RandomResizedCrop(S, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1)
  p=0.8, grayscale p=0.2, GaussianBlur(sigma 0.1-2) p=0.5 with a kernel of ~10% of S (odd,
  >= 3; MoCo's 23 px at 224), horizontal flip.
* ``light``: for 28-32 px images: RandomResizedCrop(S, scale 0.6-1), horizontal flip,
  ColorJitter(brightness 0.2, contrast 0.2); no blur, no grayscale.

torch and torchvision are imported inside functions only: the registry imports this module at
the start of every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import hookimpl
from .components import Component
from .errors import HashbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the version of the built-in recipes (part of their view banks' cache keys): bump it when
#: one of them changes
RECIPE_VERSION = 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of non-negative ints (numpy SeedSequence; stable across runs)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class Recipe(Component):
    """An augmentation recipe (see ``register_augmentations``): built as ``cls()``.

    ``transform(size)`` returns the per-image transform: a callable taking a float32 tensor
    (3, size, size) with values in [0, 1] and returning one of the same shape, dtype and range,
    drawing its randomness from torch's global generator only (which :class:`Augmenter` seeds
    for every batch). ``version`` (an int) is part of the view bank's cache key.
    """

    kind: ClassVar[str] = "augmentation"
    #: bump when ``transform`` changes: cached view banks of another version are not reused
    version: ClassVar[int] = 1

    def transform(self, size: int) -> Any:
        raise NotImplementedError


class CIBHashRecipe(Recipe):
    name = "cibhash"
    summary = "CIBHash's code: crop 0.5-1, flip, color jitter p=0.7, grayscale p=0.2, blur k=3 p=0.5"
    version = RECIPE_VERSION

    def transform(self, size: int) -> Any:
        from torchvision.transforms import v2

        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.7),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0))], p=0.5),
        ])


class MoCoV2Recipe(Recipe):
    name = "mocov2"
    summary = "MoCo v2: crop 0.2-1, color jitter p=0.8, grayscale p=0.2, blur (~10% of the side) p=0.5, flip"
    version = RECIPE_VERSION

    def transform(self, size: int) -> Any:
        from torchvision.transforms import v2

        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
        ])


class LightRecipe(Recipe):
    name = "light"
    summary = "for 28-32 px images: crop 0.6-1, flip, brightness/contrast jitter 0.2; no blur, no grayscale"
    version = RECIPE_VERSION

    def transform(self, size: int) -> Any:
        from torchvision.transforms import v2

        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ])


#: the built-in recipes, registered by :func:`register_augmentations`
RECIPES = (CIBHashRecipe, MoCoV2Recipe, LightRecipe)


@hookimpl
def register_augmentations():
    return list(RECIPES)


def recipe_names() -> list[str]:
    """The registered recipes' names, sorted."""
    from .registry import names

    return names("augmentation")


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``, else a one-line HashbenchError listing the recipes."""
    from .registry import create, registry

    if name not in registry("augmentation"):
        raise HashbenchError(f"unknown augmentation recipe '{name}' (recipes: {', '.join(recipe_names())})")
    return create("augmentation", name)


def check_recipe(name: str) -> str:
    """``name`` if it is a registered recipe, else a one-line HashbenchError listing the recipes."""
    get_recipe(name)
    return name


def build(name: str, size: int) -> Any:
    """The per-image transform of recipe ``name`` at input side ``size``."""
    return get_recipe(name).transform(int(size))


class Augmenter:
    """Recipe ``recipe`` for ``backbone`` (a TimmBackbone: its ``preprocess``, ``input_size``
    and ``data_config`` mean/std).

    ``version`` is the recipe's (see :class:`Recipe`).

    ``augment(x, seed)``: x is a batch as ``backbone.preprocess`` takes it (uint8 array or list
    of uint8 images) or a float tensor (B, 3, S, S) in [0, 1] (:meth:`unit`); returns the
    normalized augmented batch, float32 (B, 3, S, S) on the CPU. ``two_views(x, seed)`` gives
    two independent ones.
    """

    def __init__(self, backbone: Any, recipe: str) -> None:
        import torch

        chosen = get_recipe(recipe)
        self.recipe, self.version = recipe, int(chosen.version)
        self.backbone = backbone
        h, w = backbone.input_size
        if h != w:
            raise HashbenchError(f"augmentation needs a square input size, got {h}x{w}")
        self.transform = chosen.transform(h)
        cfg = backbone.data_config
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def unit(self, images: Any) -> torch.Tensor:
        """uint8 images -> float32 (B, 3, S, S) in [0, 1] (the backbone's resize, undone normalization)."""
        return (self.backbone.preprocess(images) * self.std + self.mean).clamp_(0.0, 1.0)

    def augment(self, x: Any, seed: int) -> torch.Tensor:
        import torch

        if not isinstance(x, torch.Tensor):
            x = self.unit(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            out = torch.stack([self.transform(image) for image in x])
        return (out - self.mean) / self.std

    def two_views(self, x: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if not isinstance(x, torch.Tensor):
            x = self.unit(x)
        return self.augment(x, derive_seed(seed, 0)), self.augment(x, derive_seed(seed, 1))
