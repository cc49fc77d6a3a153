"""test/data/custom.py: CSV / JSON ground truth round trip and a hand-computed mAP."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from errors import UserError
from test.data.custom import load_custom_dataset
from test.data.gnd import protocols
from test.retrieval.evaluate import evaluate_revisitop, format_results

ROOT = Path(__file__).resolve().parents[2]


def write_folder(root):
    """db/a..e.jpg (e is a png), queries/q1.jpg (40x30), queries/q2.jpg (20x10)."""
    (root / "db").mkdir(parents=True)
    (root / "queries").mkdir()
    rng = np.random.default_rng(0)
    for name in "abcd":
        cv2.imwrite(str(root / "db" / f"{name}.jpg"), rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "db" / "e.png"), rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "queries" / "q1.jpg"), rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "queries" / "q2.jpg"), rng.integers(0, 255, (10, 20, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")


CSV = """query,bbox,relevant,junk
queries/q1.jpg,2 3 30.5 25,db/a.jpg db/c,db/b.jpg
queries/q2.jpg,,db/e.png,
"""

JSON = [{"query": "queries/q1.jpg", "bbox": [2, 3, 30.5, 25], "relevant": ["db/a.jpg", "db/c"],
         "junk": ["db/b.jpg"]},
        {"query": "queries/q2", "relevant": ["db/e.png"]}]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_round_trip(tmp_path, kind):
    write_folder(tmp_path)
    gt = tmp_path / f"gt.{kind}"
    gt.write_text(CSV if kind == "csv" else json.dumps(JSON))
    g = load_custom_dataset(tmp_path, gt)
    assert g.imlist == ["db/a.jpg", "db/b.jpg", "db/c.jpg", "db/d.jpg", "db/e.png"]
    assert g.qimlist == ["queries/q1.jpg", "queries/q2.jpg"]
    assert g.db_paths[4] == str(tmp_path / "db/e.png") and g.query_paths[1] == str(tmp_path / "queries/q2.jpg")
    assert g.gnd[0]["bbx"] == (2.0, 3.0, 30.5, 25.0) and g.gnd[1]["bbx"] == (0.0, 0.0, 20.0, 10.0)
    assert list(g.gnd[0]["easy"]) == [0, 2] and list(g.gnd[0]["junk"]) == [1] and g.gnd[0]["hard"].size == 0
    assert list(g.gnd[1]["easy"]) == [4] and g.gnd[1]["junk"].size == 0
    assert g.dataset == tmp_path.name and g.nq == 2 and g.n == 5
    assert load_custom_dataset(tmp_path).imlist == g.imlist  # gt.<kind> found by default


def test_hand_computed_map(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "gt.csv").write_text(CSV)
    g = load_custom_dataset(tmp_path)
    # q1: b(junk) c d a e -> without junk c d a e: positives at 0 and 2
    #     AP = ((1 + 1/1)/2 + (1/2 + 2/3)/2) / 2 = 0.7916...
    # q2: a e ... -> positive at 1: AP = (0/1 + 1/2)/2 = 0.25
    ranks = np.array([[1, 2, 3, 0, 4], [0, 4, 1, 2, 3]]).T
    results = evaluate_revisitop(ranks, protocols(g))
    expected = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert results["E"]["aps"][0] == pytest.approx(expected)
    assert results["E"]["map"] == pytest.approx((expected + 0.25) / 2)
    assert format_results(results)[0] == "Retrieval results: mAP E: 52.08, M: 52.08, H: nan"


def test_hard_column_and_query_in_database(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "gt.csv").write_text("query,relevant,hard,junk\n"
                                     "db/a.jpg,db/c.jpg,db/d.jpg,\n"
                                     "queries/q2.jpg,db/a.jpg,,db/e\n")
    g = load_custom_dataset(tmp_path)
    # q2 is query-only -> not in the database; q1 never used -> in it; db/a is both query and relevant
    assert g.imlist == ["db/a.jpg", "db/b.jpg", "db/c.jpg", "db/d.jpg", "db/e.png", "queries/q1.jpg"]
    assert list(g.gnd[0]["easy"]) == [2] and list(g.gnd[0]["hard"]) == [3]
    assert list(g.gnd[0]["junk"]) == [0]  # its own image is junk for itself
    assert list(g.gnd[1]["easy"]) == [0] and list(g.gnd[1]["junk"]) == [4]
    ranks = np.array([[0, 3, 2, 1, 4, 5], [0, 1, 2, 3, 4, 5]]).T
    results = evaluate_revisitop(ranks, protocols(g))
    assert results["M"]["aps"][0] == pytest.approx(1.0)  # d (hard) then c: junk a skipped
    assert results["E"]["aps"][0] == pytest.approx(1.0)  # d is junk under Easy
    assert results["H"]["aps"][0] == pytest.approx(1.0)


def test_json_database_list(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "gt.json").write_text(json.dumps({"database": ["db/e.png", "db/a.jpg"], "queries": JSON[1:]}))
    g = load_custom_dataset(tmp_path)
    assert g.imlist == ["db/e.png", "db/a.jpg"] and list(g.gnd[0]["easy"]) == [0]


@pytest.mark.parametrize("text,message", [
    ("query,relevant\nqueries/q1.jpg,db/zz.jpg\n", "not an image"),
    ("query,bbox,relevant\nqueries/q1.jpg,5 5 2 9,db/a.jpg\n", "bbox"),
    ("query,junk\nqueries/q1.jpg,db/a.jpg\n", "columns query and relevant"),
    ("query,relevant,junk\nqueries/q1.jpg,db/a.jpg,db/a.jpg\n", "two of relevant/hard/junk"),
    ("query,relevant\n", "no query rows"),
])
def test_bad_ground_truth_is_user_error(tmp_path, text, message):
    write_folder(tmp_path)
    (tmp_path / "gt.csv").write_text(text)
    with pytest.raises(UserError, match=message):
        load_custom_dataset(tmp_path)


def test_rerank_features_with_custom_gnd(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "gt.csv").write_text(CSV)
    ranks = np.array([[1, 2, 3, 0, 4], [0, 4, 1, 2, 3]]).T
    rng = np.random.default_rng(1)
    for name, rows in (("Q", 2), ("X", 5)):  # unit rows: rerank_features.py refuses others
        v = rng.random((rows, 4), dtype=np.float32)
        np.save(tmp_path / f"{name}.npy", v / np.linalg.norm(v, axis=1, keepdims=True))
    np.save(tmp_path / "R.npy", ranks)
    done = subprocess.run([sys.executable, str(ROOT / "rerank_features.py"), "--query", "Q.npy", "--db", "X.npy",
                           "--ranks", "R.npy", "--methods", "none", "--gnd", "gt.csv", "--images", "."],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Retrieval results: mAP E: 52.08, M: 52.08, H: nan" in done.stdout


def test_dataset_entry_and_loader_compatibility(tmp_path):
    from test.data.custom import load_dataset_entry
    from test.data.images import RevisitopImages

    write_folder(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(JSON))
    g = load_dataset_entry("unused", f"custom:{tmp_path}::{tmp_path / 'labels.json'}")
    assert g.qimlist == ["queries/q1.jpg", "queries/q2.jpg"]
    _, query = RevisitopImages(g.query_paths, g.bboxes)[0]
    assert tuple(query.shape) == (3, 25 - 3, 30 - 2)  # the int()-truncated box crop
    _, whole = RevisitopImages(g.query_paths, g.bboxes)[1]
    assert tuple(whole.shape) == (3, 10, 20)
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset_entry(tmp_path, "nosuchset")
