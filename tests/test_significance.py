"""Per-query files, table marks and intervals, and ``hashbench compare``, on records with known values.

Cells are written straight into a results folder (records that pass the store's schema, and
per-query files whose values are drawn here), so each test knows what must be distinguishable:
itq is best, pcah just below it (0.001 in mean here, with its own noise: a tie), lsh far below (differs); sh has no per-query file
(an old record: untested).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashbench.cli import canonical_label
from hashbench.config import Experiment
from hashbench.queries import QueriesError, QueryValues
from hashbench.runner import run_grid
from hashbench.store import RunStore, load_record
from hashbench.registry import create

QUERIES = 60
OFFSETS = {"itq": 0.03, "pcah": 0.02, "lsh": -0.3, "sh": 0.0}


def write_cell(store: RunStore, method: str, offset: float, record_for, *, query_ids=None, keep=True,
               overrides=None, seed: int = 0) -> list[str]:
    """Three seeds of ``method`` at 8 bits on the synthetic protocol: per-query map values
    base + offset + noise (base shared by all methods: hard queries are hard for each)."""
    base = np.random.default_rng(99).uniform(0.35, 0.65, QUERIES)
    rng = np.random.default_rng([seed, *method.encode()])
    ids = np.arange(QUERIES) if query_ids is None else query_ids
    run_ids = []
    grid = Experiment(methods=[method], datasets=["synthetic"], bits=[8], seeds=[0, 1, 2],
                      overrides=overrides or {}).grid()
    for config in grid:
        values = np.clip(base + offset + rng.normal(0, 0.05, QUERIES), 0, 1).astype(np.float32)
        mean = float(values.astype(np.float64).mean())
        record = record_for(config, map_value=mean)
        store.write(record, QueryValues.of(ids, {"map": values}) if keep else None)
        run_ids.append(config.run_id)
    return run_ids


@pytest.fixture
def folder(tmp_path, record_for):
    store = RunStore(tmp_path)
    for method, offset in OFFSETS.items():
        write_cell(store, method, offset, record_for, keep=method != "sh")
    return tmp_path


def test_a_run_keeps_its_per_query_values_by_the_protocols_query_ids(tmp_path):
    (summary,) = run_grid(Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0]).grid(),
                          tmp_path, progress=False)
    store = RunStore(tmp_path)
    (record,) = store.records()
    assert record.per_query["file"] == f"{record.run_id}.queries.npz"
    assert (tmp_path / "runs" / record.per_query["file"]).exists()
    values = store.query_values(record)
    splits = create("dataset", "synthetic").load()
    assert np.array_equal(values.query_ids, splits.query.index)
    assert sorted(values.values) == sorted(record.metrics.keys() - {"topk"})
    for name, arr in values.values.items():
        assert arr.dtype == np.float32
        assert float(arr.astype(np.float64).mean()) == pytest.approx(record.metrics[name], abs=1e-6)


def test_a_per_query_file_that_is_not_its_records_is_an_error(folder):
    store = RunStore(folder)
    records = {r.config["method"]: r for r in store.records() if r.config["seed"] == 0}
    itq, lsh = records["itq"], records["lsh"]
    path = folder / "runs" / itq.per_query["file"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(QueriesError, match="not the file its record names"):
        store.query_values(itq)
    path.unlink()
    with pytest.raises(QueriesError, match="cannot read its per-query file"):
        store.query_values(itq)
    # another run's file, with the record's checksum edited to match: the means give it away
    other = (folder / "runs" / lsh.per_query["file"]).read_bytes()
    path.write_bytes(other)
    raw = json.loads(store.path(itq.run_id).read_text())
    raw["per_query"]["sha256"] = lsh.per_query["sha256"]
    with pytest.raises(QueriesError, match="belongs to another run"):
        store.query_values(load_record(raw, store.path(itq.run_id)))


def test_a_record_naming_a_file_outside_its_folder_is_invalid(folder):
    store = RunStore(folder)
    record = store.records()[0]
    raw = json.loads(store.path(record.run_id).read_text())
    raw["per_query"]["file"] = "../../etc/passwd"
    store.path(record.run_id).write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="per_query.file '../../etc/passwd' is not"):
        assert record.run_id not in {r.run_id for r in store.records()}


def test_table_marks_ties_with_the_best_and_says_what_was_not_tested(folder, cli):
    code, out, _ = cli("table", "--results-dir", str(folder), "--format", "md,csv")
    assert code == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["itq"].count("**") == 2 and "†" not in rows["itq"]  # the best, bold
    assert "†" in rows["pcah"]  # 0.001 below the best: not distinguishable
    assert "†" not in rows["lsh"]  # 0.32 below: distinguishable
    assert "†" not in rows["sh"]
    assert "Not tested (1 cells: sh 8b): no per-query values" in out
    assert "Holm-corrected within the column, alpha = 0.05" in out
    csv = (folder / "tables" / "map.csv").read_text().splitlines()
    assert csv[0] == "source,method,dataset,bits,n,mean,std,best,p_holm,mark,untested"
    marks = {line.split(",")[1]: line.split(",")[9] for line in csv[1:]}
    assert marks == {"itq": "reference", "pcah": "tie", "lsh": "differs", "sh": "untested"}


def test_table_ci_adds_an_interval_to_every_tested_cell(folder, cli):
    code, out, _ = cli("table", "--results-dir", str(folder), "--ci", "--format", "md,csv,latex")
    assert code == 0
    itq = next(line for line in out.splitlines() if line.startswith("| itq"))
    mean, low, high = (float(x) for x in itq.split("**")[1].replace("[", " ").replace(",", " ").replace("]", " ").split())
    assert low < mean < high and high - low < 0.1
    assert "95% interval of the mean" in out
    header = (folder / "tables" / "map.csv").read_text().splitlines()[0]
    assert header == "source,method,dataset,bits,n,mean,std,best,ci_low,ci_high,p_holm,mark,untested"
    latex = (folder / "tables" / "map.tex").read_text()
    assert r"$^\dagger$" in latex and "[" in latex
    # a wider level gives wider intervals; results are reproducible
    _, again, _ = cli("table", "--results-dir", str(folder), "--ci", "--format", "md")
    assert again == out
    _, wider, _ = cli("table", "--results-dir", str(folder), "--ci", "--confidence", "0.99", "--format", "md")
    wide_itq = next(line for line in wider.splitlines() if line.startswith("| itq"))
    w_low = float(wide_itq.split("[")[1].split(",")[0])
    assert w_low < low


def test_compare_two_rows(folder, cli):
    code, out, _ = cli("compare", "itq", "lsh", "--results-dir", str(folder))
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("| synthetic"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "8" and cells[2] == "3/3" and cells[-1] == "differ"
    assert float(cells[5].split()[0]) == pytest.approx(0.32, abs=0.02)
    assert (folder / "tables" / "compare-itq-vs-lsh.md").read_text() + "\n" == out  # print adds one
    assert (folder / "tables" / "compare-itq-vs-lsh.csv").exists()
    _, out, _ = cli("compare", "pcah", "itq", "--results-dir", str(folder))
    assert "not distinguishable" in out
    _, out, _ = cli("compare", "sh", "itq", "--results-dir", str(folder))
    assert "not tested" in out and "Not tested (1 cells): no per-query values" in out


def test_compare_all_ranks_each_cell(folder, cli):
    code, out, _ = cli("compare", "--all", "--results-dir", str(folder), "--bits", "8")
    assert code == 0
    ranked = [[c.strip() for c in l.strip("|").split("|")] for l in out.splitlines() if l.startswith("| synthetic")]
    assert [r[3] for r in ranked] == ["itq", "pcah", "sh", "lsh"]
    assert [r[2] for r in ranked] == ["1", "2", "3", "4"]
    assert [r[-1] for r in ranked] == ["best", "not distinguishable from the best", "not tested", "below the best"]


def test_compare_refuses_runs_over_different_queries(tmp_path, record_for, cli):
    store = RunStore(tmp_path)
    write_cell(store, "itq", 0.0, record_for)
    write_cell(store, "lsh", 0.0, record_for, query_ids=np.arange(1, QUERIES + 1))
    code, _, err = cli("compare", "itq", "lsh", "--results-dir", str(tmp_path))
    assert code == 2 and "their query ids differ" in err


def test_a_cells_seeds_must_share_their_queries(tmp_path, record_for, cli):
    store = RunStore(tmp_path)
    run_ids = write_cell(store, "itq", 0.0, record_for)
    write_cell(store, "lsh", 0.0, record_for)
    record = store.peek(run_ids[1])
    values = store.query_values(record)
    store.write(record, QueryValues.of(values.query_ids + 1000, values.values))  # seed 1 on other queries
    code, _, err = cli("table", "--results-dir", str(tmp_path))
    assert code == 2 and "were evaluated on different queries" in err


def test_compare_checks_its_arguments(folder, cli):
    assert "did you mean itq" in cli("compare", "itk", "lsh", "--results-dir", str(folder))[2]
    assert "two labels (A B), got 1" in cli("compare", "itq", "--results-dir", str(folder))[2]
    assert "or --all, not both" in cli("compare", "itq", "lsh", "--all", "--results-dir", str(folder))[2]
    assert "'itq' twice" in cli("compare", "itq", "itq", "--results-dir", str(folder))[2]
    assert "--bits 64: no finished run there" in cli("compare", "itq", "lsh", "--bits", "64",
                                                      "--results-dir", str(folder))[2]
    code, _, err = cli("compare", "itq", "lsh", "--alpha", "1.5", "--results-dir", str(folder))
    assert code == 2 and "between 0 and 1" in err


def test_compare_an_ablation_setting_by_its_typed_label(tmp_path, record_for, cli):
    store = RunStore(tmp_path)
    write_cell(store, "itq", 0.0, record_for)
    write_cell(store, "itq", 0.1, record_for, overrides={"itq.iterations": 5}, seed=7)
    assert canonical_label("itq[ iterations = 5 ]") == "itq[iterations=5]"
    assert canonical_label("cibhash[stochastic=true]") == "cibhash[stochastic=True]"
    assert canonical_label("nsh[tuned]") == "nsh[tuned]"
    code, out, _ = cli("compare", "itq[iterations=5]", "itq", "--results-dir", str(tmp_path))
    assert code == 0 and "itq[iterations=5] vs itq" in out and "| differ |" in out
    assert (tmp_path / "tables" / "compare-itq-iterations-5-vs-itq.md").exists()


def test_a_superseded_record_takes_its_per_query_file_along(tmp_path, record_for):
    store = RunStore(tmp_path)
    (run_id, *_) = write_cell(store, "itq", 0.0, record_for)
    first = store.sidecar_path(run_id).read_bytes()
    write_cell(store, "itq", 0.05, record_for)  # the same runs again (as --force would)
    (old,) = (tmp_path / "runs" / "superseded").glob(f"{run_id}.*.json")
    kept = old.with_name(old.name[:-len(".json")] + ".queries.npz")
    assert kept.read_bytes() == first
    assert store.sidecar_path(run_id).read_bytes() != first
    assert store.query_values(store.peek(run_id)) is not None
