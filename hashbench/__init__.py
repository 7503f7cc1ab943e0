"""hashbench: a benchmark suite for learning to hash.

Python API in timm's style::

    import hashbench
    hashbench.names("method")                 # ['itq', 'lsh', 'pcah', 'sh', ...]
    itq = hashbench.create("method", "itq", bits=32, seed=0, iterations=50)
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("hashbench")

from .registry import create, names  # noqa: E402

try:
    __version__ = version("hashbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["create", "names", "hookimpl", "__version__"]
