"""Comparison tables: aggregation over seeds, best marks, published block kept apart."""

from __future__ import annotations

import pandas as pd
import pytest

from hashbench.data.synthetic import Synthetic
from hashbench.errors import HashbenchError
from hashbench.tables import records_frame, summary_frame, write_tables


def record(method, bits, seed, value, dataset="synthetic", status="done", method_params=None):
    return {
        "run_id": f"{method}-{dataset}-{bits}-{seed}-{value}",
        "status": status,
        "config": {"method": method, "dataset": dataset, "bits": bits, "seed": seed,
                   "method_params": method_params if method_params is not None else {},
                   "dataset_params": {}},
        "metrics": {"map": value, "map_full": value / 2, "map_tie_aware": value / 2,
                    "precision_h2": 0.1, "recall_h2": 0.2},
    }


RECORDS = [
    record("lsh", 8, 0, 0.30), record("lsh", 8, 1, 0.40), record("lsh", 8, 2, 0.50),
    record("itq", 8, 0, 0.60), record("itq", 8, 1, 0.70), record("itq", 8, 2, 0.80),
    record("lsh", 16, 0, 0.90), record("itq", 16, 0, 0.50),
    record("itq", 16, 1, 0.99, status="failed"),
]


def test_mean_std_and_best():
    summary = summary_frame(records_frame(RECORDS), "map").set_index(["method", "bits"])
    assert summary.loc[("itq", 8), "mean"] == pytest.approx(0.70)
    assert summary.loc[("itq", 8), "std"] == pytest.approx(0.10)  # sample std over 3 seeds
    assert summary.loc[("itq", 8), "n"] == 3
    assert summary.loc[("itq", 16), "n"] == 1  # the failed run is not counted
    assert bool(summary.loc[("itq", 8), "best"]) and not bool(summary.loc[("lsh", 8), "best"])
    assert bool(summary.loc[("lsh", 16), "best"])


def test_written_formats(tmp_path):
    markdown, paths = write_tables(RECORDS, tmp_path, "map")
    assert sorted(p.name for p in paths) == ["map.csv", "map.md", "map.tex"]
    assert "| itq | **0.7000 ± 0.1000** | 0.5000 |" in markdown
    assert "| lsh | 0.4000 ± 0.1000 | **0.9000** |" in markdown
    csv = pd.read_csv(tmp_path / "map.csv")
    assert set(csv.columns) == {"source", "method", "dataset", "bits", "n", "mean", "std", "best"}
    tex = (tmp_path / "map.tex").read_text()
    assert r"\textbf{0.7000 $\pm$ 0.1000}" in tex and r"\begin{tabular}" in tex
    _, _ = write_tables(RECORDS, tmp_path, "map_full", ["md"])
    assert "0.3500 ± 0.0500" in (tmp_path / "map_full.md").read_text()


def test_param_variants_are_separate_rows():
    recs = RECORDS + [record("itq", 8, 0, 0.1, method_params={"iterations": 3})]
    frame = records_frame(recs)
    assert "itq[iterations=3]" in set(frame["method"])
    assert "itq" in set(frame["method"])  # a record with default params keeps the bare name


def test_unknown_metric_and_format(tmp_path):
    with pytest.raises(HashbenchError, match="unknown metric"):
        write_tables(RECORDS, tmp_path, "accuracy")
    with pytest.raises(HashbenchError, match="unknown table format"):
        write_tables(RECORDS, tmp_path, "map", ["xlsx"])


def test_published_numbers_in_their_own_block(with_plugin, tmp_path):
    class PublishedBlobs(Synthetic):
        name = "published-blobs"
        summary = "blobs with a published table (test only)"
        published = {"itq": {8: 0.111, 64: 0.333}, "bgan": {8: 0.222}}
        published_source = "Test et al. 2099, Table 1"

    with_plugin(register_datasets=lambda: [PublishedBlobs])
    recs = [record("itq", 8, s, 0.5 + s / 10, dataset="published-blobs") for s in range(3)]
    markdown, _ = write_tables(recs, tmp_path, "map")
    header = markdown.splitlines()[0]
    assert header == "| method | published-blobs 8b | published-blobs 8b (published) |"
    assert "| itq | **0.6000 ± 0.1000** | 0.111 |" in markdown
    assert "| bgan | – | 0.222 |" in markdown  # published-only methods appear, unmeasured
    assert "Test et al. 2099, Table 1" in markdown
    assert "0.333" not in markdown  # 64 bits was not run
    summary = summary_frame(records_frame(recs), "map")
    assert not summary.loc[summary["source"] == "published", "best"].any()
    # published numbers are mAP: other metrics have no published block
    assert "(published)" not in write_tables(recs, tmp_path, "map_full")[0]


def test_inputs_never_share_a_column():
    """Runs on pixels and on backbone features of one protocol are separate columns."""
    pixels = record("itq", 8, 0, 0.3)
    pixels["config"]["features"] = {"backbone": None, "pretrained": False, "input_size": None}
    lite = record("itq", 8, 0, 0.6)
    lite["config"]["features"] = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "input_size": 64}
    summary = summary_frame(records_frame([pixels, lite]), "map").set_index("dataset")
    assert summary.loc["synthetic (pixels)", "mean"] == pytest.approx(0.3)
    assert summary.loc["synthetic (tf_efficientnet_lite0 pretrained 64px)", "mean"] == pytest.approx(0.6)


def test_deep_and_shallow_runs_on_one_backbone_share_columns():
    lite = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "input_size": 64}
    shallow = record("itq", 8, 0, 0.6)
    shallow["config"]["features"] = dict(lite)
    deep = record("cibhash", 8, 0, 0.7, method_params={**lite, "frozen": True, "epochs": 30})
    tuned = record("cibhash", 8, 1, 0.8, method_params={**lite, "frozen": False, "epochs": 30})
    frame = records_frame([shallow, deep, tuned])
    column = "synthetic (tf_efficientnet_lite0 pretrained 64px)"
    assert list(frame["dataset"]) == [column, column, column[:-1] + " fine-tuned)"]
