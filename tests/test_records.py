"""The run record: one typed schema (RunRecord, version 1) written and read in one place, the
migration of version-0 records (tested on records committed before the schema existed), the
labels tables and plots read from it, and a grid reading each record and building each method
and frozen backbone once."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from hashbench import registry as registry_module
from hashbench.components import HashMethod
from hashbench.config import Experiment
from hashbench.registry import registry
from hashbench.store import (
    RECORD_VERSION,
    RecordWarning,
    RunLabel,
    RunRecord,
    RunStore,
    UnreadableRecord,
    check_record,
    load_record,
    migrate,
)
from hashbench.tables import records_frame

DATA = Path(__file__).resolve().parent / "data"
#: version-0 records copied from results/reference/runs before the RunRecord schema: run id ->
#: the label their migration gives them (today's defaults: nsh positives=2, wch lr=0.001)
OLD = {
    "nsh-fashion-mnist-32b-s0-0b5e155b001a": ("nsh", {"positives": 8}, "positives"),
    "wch-fashion-mnist-32b-s0-818ace035297": ("wch", {"lr": 0.0003}, "lr"),
    "itq-fashion-mnist-16b-s0-80cfe649925d": ("itq", {}, None),
}


@pytest.fixture
def old_folder(tmp_path) -> Path:
    """A results folder holding the committed version-0 records."""
    (tmp_path / "runs").mkdir()
    for run_id in OLD:
        shutil.copy(DATA / f"{run_id}.json", tmp_path / "runs")
    return tmp_path


def test_a_committed_old_record_loads_migrated(old_folder):
    store = RunStore(old_folder)
    for run_id, (method, changed, ablation) in OLD.items():
        raw = json.loads((DATA / f"{run_id}.json").read_text())
        assert "record_version" not in raw and "label" not in raw  # written before the schema
        record = store.read(run_id)
        assert isinstance(record, RunRecord) and record.record_version == RECORD_VERSION
        assert record.label == RunLabel(method, "fashion-mnist", changed, {})
        assert record.label.ablation == ablation and record["label"]["ablation"] == ablation
        assert record.label.method_label() == (method if not changed else
                                              f"{method}[{','.join(f'{k}={v}' for k, v in changed.items())}]")
        # everything else is the record as it was: same run, same config, same results
        assert record.run_id == raw["run_id"] and record.config == raw["config"]
        assert record.metrics == raw["metrics"] and record.curves == raw["curves"]
        assert (record.status, record.host, record.seconds, record.versions) == (
            "done", raw["host"], raw["seconds"], raw["versions"])
        assert record.features == raw["features"] and record.training == raw["training"]
        assert {k: v for k, v in record.to_dict().items() if k not in ("record_version", "label")} == raw
        # the migration is a function of the JSON form, which it leaves as it is
        migrated = migrate(raw)
        assert migrated["label"] == record.label.to_dict() and "label" not in raw
        assert load_record(migrated, DATA / f"{run_id}.json") == record
    assert not (old_folder / "runs" / "unreadable").exists()


def test_migrate_rewrites_a_folder_in_place_and_fixes_its_labels(old_folder, cli, monkeypatch):
    before = {p.name: json.loads(p.read_text()) for p in (old_folder / "runs").glob("*.json")}
    code, _, err = cli("migrate", "--results-dir", str(old_folder))
    assert code == 0 and "3 migrated, 0 current, 0 busy, 0 unreadable (record version 1)" in err
    for name, raw in before.items():
        now = json.loads((old_folder / "runs" / name).read_text())
        assert now["record_version"] == RECORD_VERSION and now["label"]["method"] == raw["config"]["method"]
        assert {k: v for k, v in now.items() if k not in ("record_version", "label")} == raw
    assert not (old_folder / "runs" / "superseded").exists()  # the same run: nothing is superseded
    assert "0 migrated, 3 current" in cli("migrate", "--results-dir", str(old_folder))[2]
    # a default that changes afterwards relabels no migrated record; a version-0 record, which
    # holds no defaults, is labelled by the defaults of the day it is migrated (the rule)
    nsh = registry("method").get("nsh")
    defaults = {**nsh.default_params(), "positives": 8}
    monkeypatch.setattr(nsh, "default_params", classmethod(lambda cls: dict(defaults)))
    run_id = "nsh-fashion-mnist-32b-s0-0b5e155b001a"
    assert RunStore(old_folder).read(run_id).label.changed == {"positives": 8}
    assert migrate(json.loads((DATA / f"{run_id}.json").read_text()))["label"]["changed"] == {}


def test_records_are_validated_when_read(old_folder, record_for):
    (config,) = Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0],
                           overrides={"itq.iterations": 5}).grid()
    store = RunStore(old_folder)
    store.write(record_for(config))
    path = store.path(config.run_id)
    data = json.loads(path.read_text())
    assert data["record_version"] == RECORD_VERSION
    assert data["label"] == {"method": "itq", "dataset": "synthetic", "changed": {"iterations": 5},
                             "dataset_changed": {}, "ablation": "iterations"}
    assert store.read(config.run_id) == load_record(data, path)
    for why, edit in [
        ("newer than this hashbench reads", {"record_version": RECORD_VERSION + 1}),
        ("record_version 'x' is not a whole number", {"record_version": "x"}),
        ("label.method 'lsh' is not config.method", {"label": {**data["label"], "method": "lsh"}}),
        ("label.changed holds values that are not in config.method_params",
         {"label": {**data["label"], "changed": {"iterations": 6}, "ablation": "iterations"}}),
        ("label.ablation 'lr' does not name its changed parameters", {"label": {**data["label"], "ablation": "lr"}}),
        ("label is not a mapping", {"label": None}),
    ]:
        with pytest.raises(UnreadableRecord, match=why):
            check_record({**data, **edit}, path)
    path.write_text(json.dumps({**data, "record_version": RECORD_VERSION + 1}))
    with pytest.warns(RecordWarning, match="newer than this hashbench reads"):
        assert store.peek(config.run_id) is None


def test_new_records_store_their_label(cli, tmp_path):
    code, _, err = cli("run", "--methods", "lsh,itq", "--datasets", "synthetic", "--bits", "8", "--seeds", "0",
                       "--set", "itq.iterations=5", "--set", "synthetic.spread=0.5", "--no-progress",
                       "--results-dir", str(tmp_path))
    assert code == 0, err
    labels = {r.label.method: r.label for r in RunStore(tmp_path).records()}
    assert labels["itq"] == RunLabel("itq", "synthetic", {"iterations": 5}, {"spread": 0.5})
    assert labels["lsh"].changed == {} and labels["lsh"].ablation is None
    table = (tmp_path / "tables" / "map.md").read_text()
    assert "| itq[iterations=5] |" in table and "synthetic[spread=0.5] 8b" in table


def test_runs_that_share_a_label_but_not_their_parameters_are_told_apart(record_for):
    """Two sets of itq runs both at the defaults of their day (the default changed between
    them): two rows, each naming its own value, never one mean over both."""
    old, new = (Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0, 1],
                           overrides={"itq.iterations": n}).grid() for n in (10, 50))
    records = [RunRecord.from_dict({**record_for(c, map_value=0.1 * (i + 1)),
                                    "label": RunLabel("itq", "synthetic").to_dict(), "record_version": 1})
               for i, c in enumerate(old + new)]
    frame = records_frame(records)
    assert sorted(set(frame["method"])) == ["itq[iterations=10]", "itq[iterations=50]"]
    assert frame.groupby("method")["seed"].apply(sorted).tolist() == [[0, 1], [0, 1]]
    assert sorted(set(records_frame(records[:2])["method"])) == ["itq"]  # alone: the stored label


def test_the_reference_results_report_the_same_from_their_records(tmp_path):
    """The committed reference records (migrated to version 1) give the committed comparison
    table (its significance marks too, from the committed per-query files), and each committed
    ablation table's cells, from their stored labels alone."""
    import pandas as pd

    from hashbench.plots import ablations_from_records
    from hashbench.tables import write_tables

    reference = Path(__file__).resolve().parents[1] / "results" / "reference"
    if not (reference / "runs").is_dir():
        pytest.skip("no reference results in this tree")
    store = RunStore(reference)
    records = store.records()
    write_tables(records, tmp_path, "map", ["md", "csv"], store=store)  # marks from the per-query files
    for name in ("map.md", "map.csv"):
        assert (tmp_path / name).read_text() == (reference / "tables" / name).read_text()
    ablations = {a.name: a for a in ablations_from_records(records)}
    tables = sorted((reference / "tables").glob("ablation-*.csv"))
    assert sorted(ablations) == [p.stem for p in tables]
    for path in tables:
        ablation = ablations[path.stem]
        table = pd.read_csv(path, dtype={"setting": str})
        assert set(ablation.settings) == set(table["setting"])
        for row in table.itertuples(index=False):
            cell = ablation.cells[row.setting, row.dataset, row.bits]
            assert (cell["n"], cell["best"]) == (row.n, row.best)
            assert cell["mean"] == pytest.approx(row.mean, rel=1e-12) and cell["std"] == pytest.approx(row.std)


# ----------------------------------------------------------------------------- once per grid

class Reader(HashMethod):
    """LSH whose cache_reads is its own (test only): built once per run, to ask and to fit."""

    name = "reader"
    summary = "lsh with its own cache_reads (test only)"
    built = 0

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, bits, seed=0, **params):
        super().__init__(bits, seed, **params)
        Reader.built += 1

    def cache_reads(self):
        return []

    def fit(self, train, val=None):
        self.w = self.rng.normal(size=(train.x.shape[1], self.bits))

    def encode(self, x):
        return x @ self.w >= 0


@pytest.fixture
def counted(monkeypatch):
    """Counts of Registry.create by kind and of record files parsed."""
    from hashbench import store

    counts: Counter[str] = Counter()
    create, read = registry_module.Registry.create, store._read_json

    def counted_create(self, name, **params):
        counts[self.kind] += 1
        return create(self, name, **params)

    def counted_read(path):
        counts["record reads"] += 1
        return read(path)

    monkeypatch.setattr(registry_module.Registry, "create", counted_create)
    monkeypatch.setattr(store, "_read_json", counted_read)
    return counts


def test_a_grid_reads_each_record_once_and_builds_each_method_once(cli, tmp_path, with_plugin, counted):
    with_plugin(register_methods=lambda: [Reader])
    Reader.built = 0
    args = ["run", "--methods", "reader,lsh", "--datasets", "synthetic", "--bits", "8,16", "--seeds", "0,1",
            "--no-progress", "--results-dir", str(tmp_path)]
    code, _, err = cli(*args)
    assert code == 0 and "8 done" in err, err
    # each run's method is built once: reader's to ask its cache reads, then fitted; lsh's (no
    # cache reads of its own) only to be fitted
    assert counted["method"] == 8 and Reader.built == 4
    assert counted["record reads"] == 8  # none before (no record yet), each new one for the table
    counted.clear()
    code, _, err = cli(*args)
    assert code == 0 and "8 skipped" in err
    assert counted["method"] == 0 and counted["record reads"] == 8  # read once, reused by the table


def test_a_frozen_backbone_is_built_once_per_grid(cli, tmp_path, with_plugin, counted, monkeypatch, tiny_images):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with_plugin(register_datasets=lambda: [tiny_images])
    code, _, err = cli("run", "--methods", "itq,lsh", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0,1",
                       "--backbone", "resnet18", "--pretrained", "false", "--input-size", "32", "--no-progress",
                       "--no-table", "--results-dir", str(tmp_path))
    assert code == 0 and "4 done" in err, err
    # preflight builds it, the cache warm-up and the four runs' features reuse it
    assert counted["backbone"] == 1
