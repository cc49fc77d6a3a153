"""Settings that overflow float32, non-finite intermediate scores, damaged cache entries and
display settings beyond the data: through the entry points."""

import pickle

import numpy as np
import pytest

from tests.entry_points import base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "numbers")


def zero_sum_case(folder):
    """Unit rows x and -x: with K = 1 and beta = 1 the neighbour weights 1 + beta * (-1) sum to zero."""
    X = np.zeros((4, 8), np.float32)
    X[0, 0], X[1, 0], X[2, 1], X[3, 1] = 1, -1, 1, -1
    Q = X[:1].copy()
    np.save(folder / "X.npy", X)
    np.save(folder / "Q.npy", Q)
    np.save(folder / "r.npy", np.array([[0], [1]], np.int64))
    with open(folder / "g.pkl", "wb") as handle:
        pickle.dump({"imlist": [f"d{i}" for i in range(4)], "qimlist": ["q"],
                     "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [], "junk": []}]}, handle)
    return ["--query", folder / "Q.npy", "--db", folder / "X.npy", "--ranks", folder / "r.npy"]


def test_non_finite_reranking_scores_stop_instead_of_keeping_the_first_pass_order(tmp_path, entry):
    args = zero_sum_case(tmp_path)
    done = entry("rerank_features.py", *args, "--M", "2", "--K", "1", "--beta", "1", "--gnd", tmp_path / "g.pkl",
                 "--out", tmp_path / "t.npy", cwd=tmp_path)
    line = error_line(done, "NaN or Inf scores for 1 of 1 queries", "beta=1", preflight=False)
    assert "mAP" not in done.stdout and not (tmp_path / "t.npy").exists(), line


def test_a_sweep_stops_on_non_finite_scores_too(tmp_path, entry):
    args = zero_sum_case(tmp_path)
    done = entry("sweep.py", *args, "--gnd", tmp_path / "g.pkl", "--M", "2", "--K", "0,1", "--beta", "0.5,1",
                 "--out-dir", tmp_path / "o", "--no-plots", cwd=tmp_path)
    error_line(done, "NaN or Inf scores", preflight=False)
    assert not (tmp_path / "o" / "sweep.json").exists()


@pytest.mark.parametrize("script, args", [
    ("test.py", ["SupG.beta", "1e38", "SupG.K", "3"]),   # 4 x 1e38 > 3.4e38
    ("rerank_features.py", ["--beta", "1e38"]),
    ("sweep.py", ["--beta", "0.1,1e38", "--M", "4", "--K", "1,3"]),
])
def test_a_beta_beyond_float32_is_refused_before_any_work(ws, tmp_path, entry, script, args):
    root, _ = ws
    if script == "test.py":
        done = entry(script, *base_args(root, out=tmp_path / "out"), *args, cwd=tmp_path)
        error_line(done, "SupG.beta", "overflow")
        assert not (tmp_path / "out").exists()
        return
    X = np.eye(4, dtype=np.float32)
    np.save(tmp_path / "X.npy", X)
    common = ["--query", tmp_path / "X.npy", "--db", tmp_path / "X.npy"]
    extra = ["--out", tmp_path / "t.npy"] if script == "rerank_features.py" else \
        ["--gnd", tmp_path / "none.pkl", "--out-dir", tmp_path / "o"]
    error_line(entry(script, *common, *extra, *args, cwd=tmp_path), "--beta", "overflow")


def test_a_cache_entry_with_one_bit_changed_is_recomputed_and_said(ws, tmp_path, entry):
    root, _ = ws
    out = tmp_path / "out"
    args = base_args(root, out=out)
    first = entry("test.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    entries = sorted((out / "feature_cache").glob("*.npy"))
    raw = bytearray(entries[0].read_bytes())
    raw[-2] ^= 0x01  # a value bit: the npy header stays intact
    entries[0].write_bytes(bytes(raw))
    second = entry("test.py", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "is damaged" in second.stdout and entries[0].name in second.stdout
    results = [line for line in (out / "log.txt").read_text().splitlines() if "Retrieval results" in line]
    assert len(results) == 4 and results[:2] == results[2:]
    third = entry("test.py", *args, cwd=tmp_path)
    assert "is damaged" not in third.stdout and "from the cache" in third.stdout


def test_picture_rows_far_beyond_the_database_are_clamped(ws, tmp_path, entry):
    root, gnd = ws
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "TEST.VIS_QUERIES", "1", "TEST.VIS_TOPK", str(10 ** 12),
                 "TEST.CACHE", "False", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((out / "pictures").rglob("*.png"))) == 1
