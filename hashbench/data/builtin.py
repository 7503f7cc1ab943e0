"""Registers the bundled protocols through the same hook a third-party package uses."""

from .. import hookimpl
from .digits import Digits
from .synthetic import Synthetic


@hookimpl
def register_datasets():
    return [Digits, Synthetic]
