"""Registers the bundled protocols through the same hook a third-party package uses."""

from .. import hookimpl
from .cifar10 import Cifar10, Cifar10_1k54k, Cifar10CIBHash
from .digits import Digits
from .fashion_mnist import FashionMNIST
from .listfile import Coco, NusWide
from .synthetic import Synthetic


@hookimpl
def register_datasets():
    return [Digits, Synthetic, FashionMNIST, Cifar10, Cifar10_1k54k, Cifar10CIBHash, NusWide, Coco]
