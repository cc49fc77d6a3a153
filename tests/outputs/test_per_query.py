"""Per-query results through test.py: each query's AP before and after reranking, with its name, in
<OUT_DIR>/per_query_<dataset>.csv, results.json and the TEST.SAVE_FEATURES npz; checked against the
official revisitop evaluation on the saved ranks, and their mean against the reported mAP."""

import csv
import json
import math

import numpy as np
import pytest

from test.data.synthetic import write_custom_folder, write_gldv2
from tests.entry_points import base_args, entry_module, roxford_workspace
from tests.reference.official_metrics import official_compute_map

PROTOCOLS = ("E", "M", "H")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """(root, gnd, a feature cache shared by every run of the module: extraction happens once)."""
    root, gnd = roxford_workspace(tmp_path_factory, "per_query", n_db=6, n_query=3)
    return root, gnd, root / "cache"


def run(ws, out, *extra, dataset="roxford5k"):
    root, _, cache = ws
    argv = [str(a) for a in (*base_args(root, dataset, out=out), "TEST.CACHE_DIR", cache, *extra)]
    assert entry_module("test.py").main(argv) == 0
    return out


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(text):
    return float(text) if text else math.nan


def official_protocols(gnd):
    return {"E": [{"ok": g["easy"], "junk": g["junk"] + g["hard"]} for g in gnd["gnd"]],
            "M": [{"ok": g["easy"] + g["hard"], "junk": g["junk"]} for g in gnd["gnd"]],
            "H": [{"ok": g["hard"], "junk": g["junk"] + g["easy"]} for g in gnd["gnd"]]}


def official_aps(ranks, gnd):
    """(nq, 3) per-query APs of the official revisitop code (loops and all)."""
    protos = official_protocols(gnd)
    return np.stack([official_compute_map(ranks, protos[p], [1, 5, 10])[1] for p in PROTOCOLS], axis=1)


def same(a, b):
    np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


@pytest.fixture(scope="module")
def saved(ws, tmp_path_factory):
    out = run(ws, tmp_path_factory.mktemp("pq_out"), "TEST.SAVE_FEATURES", "True")
    return out, np.load(out / "roxford5k.npz"), json.loads((out / "results.json").read_text())[-1], \
        read_csv(out / "per_query_roxford5k.csv")


def test_per_query_ap_is_the_official_ap_of_the_saved_ranks(ws, saved):
    _, gnd, _ = ws
    _, npz, _, rows = saved
    assert [row["query"] for row in rows] == list(gnd["qimlist"]) == list(npz["query_names"])
    assert list(npz["ap_labels"]) == list(PROTOCOLS) and str(npz["units"]) == "fraction"
    same(npz["ap_before"], official_aps(npz["ranks_global"], gnd))
    same(npz["ap_after"], official_aps(npz["ranks"], gnd))
    assert not np.array_equal(npz["ranks"], npz["ranks_global"])  # reranking moved something
    for when in ("before", "after"):
        from_csv = [[number(row[f"ap_{p}_{when}"]) for p in PROTOCOLS] for row in rows]
        same(from_csv, npz[f"ap_{when}"])  # the csv's text gives the very same floats back


def test_mean_of_per_query_ap_is_the_reported_map(saved):
    out, npz, record, rows = saved
    logged = [line for line in (out / "log.txt").read_text().splitlines()
              if line.startswith("Retrieval results: mAP ")][-1]
    shown = []
    for i, p in enumerate(PROTOCOLS):
        column = np.array([number(row[f"ap_{p}_after"]) for row in rows])
        finite = column[np.isfinite(column)]
        mean = np.cumsum(finite)[-1] / finite.size  # the official order of summation
        assert mean == record["results"][p]["map"] == float(npz[f"map{p}"])
        assert mean == pytest.approx(np.nanmean(npz["ap_after"][:, i]), rel=1e-12)
        shown.append(f"{p}: {mean * 100:.2f}")
    assert logged == "Retrieval results: mAP " + ", ".join(shown)


def test_results_json_holds_the_same_per_query_values_and_run_id(saved):
    _, npz, record, rows = saved
    assert record["units"] == "fraction"
    per_query = record["per_query"]
    assert per_query["query"] == [row["query"] for row in rows]
    for when in ("before", "after"):
        for i, p in enumerate(PROTOCOLS):
            values = [math.nan if v is None else v for v in per_query[f"ap_{when}"][p]]
            same(values, npz[f"ap_{when}"][:, i])
    assert {row["run_id"] for row in rows} == {record["run_id"]} == {str(npz["run_id"])}


def test_without_reranking_before_equals_after(ws, tmp_path):
    out = run(ws, tmp_path / "out", "SupG.rerank", "False")
    rows = read_csv(out / "per_query_roxford5k.csv")
    assert all(row[f"ap_{p}_before"] == row[f"ap_{p}_after"] for row in rows for p in PROTOCOLS)


def test_custom_dataset_without_hard_images_leaves_h_empty(ws, tmp_path):
    """A custom folder has no `hard` column: every query's H AP is NaN, which the csv leaves empty,
    results.json writes null and the mAP (null too) never becomes a number."""
    folder = write_custom_folder(tmp_path / "shop")
    out = run(ws, tmp_path / "out", dataset=f"custom:{folder}")
    [path] = out.glob("per_query_shop_*.csv")
    [row] = read_csv(path)
    assert row["query"] == "queries/q0.jpg" and row["ap_H_before"] == row["ap_H_after"] == ""
    assert 0 < float(row["ap_M_after"]) <= 1
    record = json.loads((out / "results.json").read_text())[-1]
    assert record["per_query"]["ap_after"]["H"] == [None] and record["results"]["H"]["map"] is None
    assert record["per_query"]["ap_after"]["M"] == [float(row["ap_M_after"])] == [record["results"]["M"]["map"]]


def challenge_ap_at_100(predicted, relevant):
    """GLDv2's AP@100 for one query, written out from its definition."""
    hits, total = 0, 0.0
    for i, p in enumerate(predicted[:100]):
        if p in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), 100)


def test_gldv2_per_query_ap_at_100(ws, tmp_path):
    from test.data.gldv2 import load_gldv2

    write_gldv2(tmp_path / "gld")
    out = run(ws, tmp_path / "out", "TEST.SAVE_FEATURES", "True", dataset=f"gldv2:{tmp_path / 'gld'}")
    gld = load_gldv2(tmp_path / "gld")
    npz = np.load(out / "gldv2.npz")
    rows = read_csv(out / "per_query_gldv2.csv")
    assert [row["query"] for row in rows] == gld.query_ids and [row["usage"] for row in rows] == gld.usage
    assert list(npz["ap_labels"]) == ["@100"] and list(npz["usage"]) == gld.usage
    for ranks, when in ((npz["ranks_global"], "before"), (npz["ranks"], "after")):
        expected = [challenge_ap_at_100(list(ranks[:, j]), set(gld.relevant[j].tolist()))
                    for j in range(len(gld.query_ids))]
        assert [float(row[f"ap_@100_{when}"]) for row in rows] == pytest.approx(expected, abs=1e-15)
        same(npz[f"ap_{when}"][:, 0], [float(row[f"ap_@100_{when}"]) for row in rows])
    record = json.loads((out / "results.json").read_text())[-1]
    after = npz["ap_after"][:, 0]
    assert record["results"]["All"] == float(after.mean()) == float(npz["mapAll"])
    assert record["per_query"]["usage"] == gld.usage


def test_onemeval_per_query_ap_is_that_of_the_full_ranking_with_distractors(ws, tmp_path):
    """Under SupG.onemeval only the top ranks are saved; the per-query APs are still exact: those of
    the whole database + distractors ranking, before and with the reranked top M."""
    _, gnd, _ = ws
    rng = np.random.default_rng(3)
    distractors = rng.standard_normal((40, 2048)).astype(np.float32)
    distractors /= np.linalg.norm(distractors, axis=1, keepdims=True)
    np.save(tmp_path / "r1m.npy", distractors)
    out = run(ws, tmp_path / "out", "TEST.SAVE_FEATURES", "True", "SupG.onemeval", "SupG.distractors_path",
              tmp_path / "r1m.npy", "TEST.TOPK", "8")
    npz = np.load(out / "roxford5k.npz")
    every = np.concatenate([npz["X"], distractors])
    full = np.argsort(-(every @ npz["Q"].T), axis=0, kind="stable")
    np.testing.assert_array_equal(full[:8], npz["ranks_global"])  # the saved top is the full ranking's
    same(npz["ap_before"], official_aps(full, gnd))
    reranked = full.copy()
    reranked[:4] = npz["ranks"][:4]  # SupG.M 4: only the top 4 move
    same(npz["ap_after"], official_aps(reranked, gnd))
    rows = read_csv(out / "per_query_roxford5k.csv")
    same([[number(row[f"ap_{p}_after"]) for p in PROTOCOLS] for row in rows], npz["ap_after"])


def test_a_ground_truth_named_like_the_per_query_csv_is_refused_before_any_work(ws, tmp_path, entry):
    """The csv is an output: a ground-truth file in OUT_DIR under its name stops the run before the
    header and keeps its bytes."""
    from test.datasets import _short_hash
    from tests.entry_points import error_line

    root, _, _ = ws
    folder = write_custom_folder(tmp_path / "shop")
    out = tmp_path / "out"
    out.mkdir()
    gt = out / f"per_query_shop_{_short_hash(folder)}.csv"
    gt.write_bytes((folder / "gt.csv").read_bytes())
    before = gt.read_bytes()
    args = ["TEST.WEIGHTS", root / "weights", "TEST.DATASET_LIST", f"custom:{folder}::{gt}", "OUT_DIR", out,
            "DEVICE", "cpu"]
    error_line(entry("test.py", *args, cwd=tmp_path), "refusing to write", gt.name, "it is an input of this run")
    assert gt.read_bytes() == before and not (out / "config.yaml").exists()
