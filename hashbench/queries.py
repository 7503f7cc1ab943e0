"""Per-query results: each metric's value for every query of a run, kept in a file beside its record.

A done run's record holds means over queries (``metrics``); its per-query values (what the
confidence intervals and paired tests of :mod:`hashbench.stats` resample) live in
``runs/<run-id>.queries.npz``, written atomically before the record, which names it (file name
only, relative to ``runs/``) with its SHA-256 (the record's ``per_query`` entry, see
:meth:`QueryValues.entry`). The file is an uncompressed ``.npz`` without pickles:

- ``query_ids``: int64 (Q,), the protocol's ids of the queries (``Split.index`` of the query
  split), in the order the run evaluated them;
- one float32 (Q,) array per metric of :data:`hashbench.store.METRICS`, each value in [0, 1];
  the record's metric is their mean (to float32 rounding).

Two runs pair up query by query only when their ``query_ids`` are equal (same protocol and
split); :mod:`hashbench.stats` refuses to pair the rest. A record without ``per_query`` (written before
this file existed) loads as before; its runs cannot enter a paired test and are reported as
untested.

numpy only (no torch, no pandas).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import HashbenchError

SUFFIX = ".queries.npz"
#: the record's metric and the mean of its per-query values may differ by float32 rounding only
MEAN_TOLERANCE = 1e-6


class QueriesError(HashbenchError):
    """A per-query file that is missing, corrupt, or not the one its record names."""


def sidecar_name(run_id: str) -> str:
    """The per-query file of a run, relative to the runs folder."""
    return f"{run_id}{SUFFIX}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, eq=False)
class QueryValues:
    """The per-query values of one run: ``query_ids`` int64 (Q,) and ``values`` {metric:
    float32 (Q,)}, index i of every array being the query ``query_ids[i]``."""

    query_ids: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def of(cls, query_ids: Any, values: Mapping[str, Any]) -> QueryValues:
        """Checked and converted (ids to int64, values to float32): one id per value, ids
        unique, values finite and in [0, 1]; QueriesError saying why not."""
        ids = np.asarray(query_ids)
        if ids.ndim != 1 or len(ids) == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise QueriesError(f"query_ids must be a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise QueriesError("query_ids are not unique")
        out = {}
        for name, raw in values.items():
            arr = np.asarray(raw)
            if arr.shape != ids.shape or not np.issubdtype(arr.dtype, np.floating):
                raise QueriesError(f"per-query {name}: {arr.dtype} {arr.shape}, expected floats of shape {ids.shape}")
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise QueriesError(f"per-query {name}: values outside [0, 1] or not finite")
            out[name] = arr
        if not out:
            raise QueriesError("no per-query metric")
        return cls(ids.astype(np.int64), out)

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file (the same bytes for the same values: fixed entry dates)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in (("query_ids", self.query_ids), *sorted(self.values.items())):
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> QueryValues:
        """The values in a ``.npz`` file's bytes; QueriesError naming ``where`` when it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except Exception as exc:  # noqa: BLE001 - zip, format and pickle errors alike: not our file
            raise QueriesError(f"{where}: not a per-query file ({type(exc).__name__}: {exc})") from None
        if "query_ids" not in arrays:
            raise QueriesError(f"{where}: no query_ids")
        try:
            return cls.of(arrays.pop("query_ids"), arrays)
        except QueriesError as exc:
            raise QueriesError(f"{where}: {exc}") from None

    def entry(self, run_id: str, data: bytes) -> dict[str, Any]:
        """The record's ``per_query`` entry for this file (``data``: its bytes)."""
        return {"file": sidecar_name(run_id), "sha256": sha256(data), "num_queries": self.num_queries,
                "metrics": sorted(self.values)}

    def check_means(self, metrics: Mapping[str, Any], where: str) -> None:
        """QueriesError unless each metric here is the record's ``metrics`` value (the mean)."""
        for name, arr in self.values.items():
            mean = float(arr.astype(np.float64).mean())
            if name not in metrics or abs(mean - float(metrics[name])) > MEAN_TOLERANCE:
                raise QueriesError(f"{where}: the mean of its per-query {name} ({mean:.6f}) is not the record's "
                                   f"{metrics.get(name)!r}: the file belongs to another run")

    def same_queries(self, other: QueryValues) -> bool:
        return self.num_queries == other.num_queries and bool(np.array_equal(self.query_ids, other.query_ids))


def check_entry(entry: Any, run_id: str, metric_names: tuple[str, ...]) -> str | None:
    """Why ``entry`` is not a valid ``per_query`` entry of the record ``run_id`` (None if it is)."""
    if not isinstance(entry, dict):
        return "per_query is not a mapping"
    if entry.get("file") != sidecar_name(run_id):
        return f"per_query.file {entry.get('file')!r} is not {sidecar_name(run_id)!r}"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return "per_query.sha256 is not a SHA-256 hex digest"
    n = entry.get("num_queries")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return f"per_query.num_queries is {n!r}, not a whole number > 0"
    names = entry.get("metrics")
    if not isinstance(names, list) or not names or any(m not in metric_names for m in names):
        return f"per_query.metrics {names!r} are not metric names"
    return None

