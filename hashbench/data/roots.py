"""Where protocol data lives, and the helpers the image protocols share to find or fetch it.

Search order of every protocol (the first folder that holds all its files wins):

1. ``<data_root>/<folder>``: ``data_root()`` is the environment variable ``HASHBENCH_DATA``
   (the CLI's ``--data-root DIR`` sets it);
2. the protocol's system places (e.g. ``/usr/share/datasets/fashion-mnist`` from Debian's package);
3. the cache ``<cache_root>/data/<folder>``: ``cache_root()`` is ``HASHBENCH_CACHE`` if set, else
   ``~/.cache/hashbench``.

The location is not part of a run's identity; a protocol's ``fingerprint()`` is.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import IO, Iterable, Sequence

from ..errors import HashbenchError

DATA_ENV = "HASHBENCH_DATA"
CACHE_ENV = "HASHBENCH_CACHE"


def data_root() -> Path | None:
    """``$HASHBENCH_DATA`` as an absolute Path (``~`` expanded), or None when unset or empty."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser().absolute() if value else None


def cache_root() -> Path:
    """``$HASHBENCH_CACHE`` if set, else ``~/.cache/hashbench``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser().absolute() if value else Path.home() / ".cache" / "hashbench"


def data_cache_dir(folder: str) -> Path:
    """The cache folder of one protocol's data: ``<cache_root>/data/<folder>``."""
    return cache_root() / "data" / folder


def search_dirs(folder: str, system: Sequence[Path] = (), root_itself: bool = False) -> list[Path]:
    """The folders to look in, in order: data root (``<root>/<folder>``, then ``<root>`` itself if
    ``root_itself``), ``system``, the cache. Folders that do not exist are kept (for messages)."""
    dirs: list[Path] = []
    root = data_root()
    if root is not None:
        dirs.append(root / folder)
        if root_itself:
            dirs.append(root)
    dirs.extend(Path(p) for p in system)
    dirs.append(data_cache_dir(folder))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def not_found(protocol: str, folder: str, files: str, searched: Iterable[Path], ways: Sequence[str] = (),
              note: str = "") -> HashbenchError:
    """The one-line error for data that is nowhere: every way to provide it and where we looked.

    ``files`` describes the expected file names; ``ways`` are protocol-specific ways (e.g. an apt
    package) listed before the generic ones; ``note`` is appended (e.g. why a download failed).
    """
    generic = [
        f"put {files} in DIR/{folder} and pass --data-root DIR (or set {DATA_ENV}=DIR)",
        f"put them in the cache {data_cache_dir(folder)} (with {CACHE_ENV}=C set: C/data/{folder})",
    ]
    options = "; or ".join([*ways, *generic])
    looked = ", ".join(str(d) for d in searched)
    message = f"{protocol}: data not found. Provide it: {options}. Looked in: {looked}"
    if note:
        message += f". {note}"
    return HashbenchError(" ".join(message.split("\n")))


def stat_fingerprint(paths: Iterable[Path], extra: bytes = b"") -> str:
    """16 hex digits of sha256 over each file's name, size and mtime (no read); + ``extra``."""
    digest = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        digest.update(f"{Path(p).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest.update(extra)
    return digest.hexdigest()[:16]


def open_url(url: str, timeout: float = 60.0) -> IO[bytes]:
    """Open ``url`` for reading (tests monkeypatch this: no network in tests)."""
    return urllib.request.urlopen(url, timeout=timeout)


def download(url: str, dest: Path, md5: str | None = None, size: int | None = None) -> Path:
    """Fetch ``url`` into ``dest`` atomically (a temporary file renamed when complete and verified).

    Raises HashbenchError when the transfer fails or the size / md5 differ; leaves no partial file.
    """
    dest = Path(dest)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    print(f"hashbench: downloading {url} to {dest}", file=sys.stderr)
    try:
        with open_url(url) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server answers
            with open(part, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        if size is not None and received != size:
            raise HashbenchError(f"download of {url} gave {received} bytes, expected {size}")
        if md5 is not None and digest.hexdigest() != md5:
            raise HashbenchError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5}")
        os.replace(part, dest)
    except HashbenchError:
        raise
    except Exception as exc:  # URLError, timeouts, disk errors
        raise HashbenchError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        part.unlink(missing_ok=True)  # gone after the rename; removed after any failure
    return dest
