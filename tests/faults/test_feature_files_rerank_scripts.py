"""Faults: the values and types inside feature files, and sweep.py outputs blocked by directories.

- rerank_features.py / sweep.py: float16 features are upcast to float32 (their products rounded to
  float16 reorder near-ties); rows that are not L2-normalised (huge norms that overflow float32
  similarities into Inf, all-zero rows) and float types other than float16/32/64 (float128) are
  refused naming the file; an empty --ranks array is refused.
- sweep.py: an output name taken by a directory is refused before any work, so no partial set of
  outputs is left.
- test.py SupG.onemeval: float128 .npy and sparse torch distractor files are refused naming the file.
"""

import pickle

import numpy as np
import pytest
import torch

from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture
def features(tmp_path):
    """Q.npy (4 x 64), X.npy (120 x 64), unit float32 rows; gnd.pkl for them."""
    rng = np.random.default_rng(3)
    X = unit_rows(rng.standard_normal((120, 64)))
    Q = unit_rows(X[:4] + 0.8 * rng.standard_normal((4, 64)))
    np.save(tmp_path / "Q.npy", Q.astype(np.float32))
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    gnd = [{"bbx": [0.0, 0.0, 1.0, 1.0], "easy": [j, 10 + j], "hard": [20 + j], "junk": []} for j in range(4)]
    with open(tmp_path / "gnd.pkl", "wb") as handle:
        pickle.dump({"imlist": [f"db{i}" for i in range(120)], "qimlist": [f"q{j}" for j in range(4)],
                     "gnd": gnd}, handle)
    return tmp_path


RERANK = ["--methods", "none,supg", "--M", "20", "--K", "3"]
SWEEP = ["--M", "5", "--K", "1", "--beta", "0.1", "--no-plots"]


def test_float16_features_rank_as_their_float32_values(features, entry):
    """float16 similarities are rounded to float16 and reorder near-ties: the features are upcast."""
    Q, X = np.load(features / "Q.npy"), np.load(features / "X.npy")
    np.save(features / "Q16.npy", Q.astype(np.float16))
    np.save(features / "X16.npy", X.astype(np.float16))
    np.save(features / "Q32.npy", Q.astype(np.float16).astype(np.float32))
    np.save(features / "X32.npy", X.astype(np.float16).astype(np.float32))
    for bits in ("16", "32"):
        done = entry("rerank_features.py", "--query", f"Q{bits}.npy", "--db", f"X{bits}.npy", *RERANK,
                     "--out", f"top{bits}.npy", "--topk", "120", cwd=features)
        assert done.returncode == 0, done.stderr
    for method in ("none", "supg"):
        np.testing.assert_array_equal(np.load(features / f"top16.{method}.npy"),
                                      np.load(features / f"top32.{method}.npy"))


@pytest.mark.parametrize("script", ["rerank_features.py", "sweep.py"])
def test_huge_norms_are_refused_not_ranked_by_index(features, entry, script):
    """X * 1e20 in float32: X Q^T is Inf everywhere, the ranking would be index order."""
    np.save(features / "Xbig.npy", np.load(features / "X.npy") * np.float32(1e20))
    extra = [*RERANK, "--out", "top.npy"] if script == "rerank_features.py" else [*SWEEP, "--out-dir", "o"]
    done = entry(script, "--query", "Q.npy", "--db", "Xbig.npy", "--gnd", "gnd.pkl", *extra, cwd=features,
                 subprocess=script == "sweep.py")
    error_line(done, "database features Xbig.npy are not L2-normalised", "from 1e+20 to 1e+20",
               "120 of 120 rows", "L2-normalise every row")
    assert "mAP" not in done.stdout
    assert not list(features.glob("top*")) and not list(features.glob("o/*"))


def test_all_zero_row_is_refused(features, entry):
    X = np.load(features / "X.npy")
    X[7] = 0
    np.savez(features / "f.npz", Q=np.load(features / "Q.npy"), X=X)
    done = entry("rerank_features.py", "--features", "f.npz", "--gnd", "gnd.pkl", *RERANK, cwd=features)
    error_line(done, "database features f.npz (X) are not L2-normalised", "from 0 to 1", "first row 7",
               "1 all-zero", "drop or replace the all-zero rows")
    assert "mAP" not in done.stdout


def test_norms_within_the_tolerance_are_accepted(features, entry):
    """Rounding of saved unit rows (float16 storage, a norm of 1.005) is not refused."""
    np.save(features / "Xnear.npy", np.load(features / "X.npy") * np.float32(1.005))
    done = entry("rerank_features.py", "--query", "Q.npy", "--db", "Xnear.npy", "--gnd", "gnd.pkl", *RERANK,
                 cwd=features)
    assert done.returncode == 0 and done.stdout.count("Retrieval results: mAP") == 2, done.stderr


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 on this platform")
@pytest.mark.parametrize("which", ["query", "db"])
def test_float128_features_are_refused(features, entry, which):
    name = "Q.npy" if which == "query" else "X.npy"
    np.save(features / "wide.npy", np.load(features / name).astype(np.longdouble))
    files = {"query": "Q.npy", "db": "X.npy", which: "wide.npy"}
    done = entry("rerank_features.py", "--query", files["query"], "--db", files["db"], "--gnd", "gnd.pkl",
                 *RERANK, cwd=features)
    error_line(done, "wide.npy", f"dtype {np.dtype(np.longdouble).name}", "float16, float32 and float64")


@pytest.mark.parametrize("script", ["rerank_features.py", "sweep.py"])
def test_empty_ranks_are_refused(features, entry, script):
    np.save(features / "R0.npy", np.zeros((0, 4), np.int64))
    extra = RERANK if script == "rerank_features.py" else [*SWEEP, "--out-dir", "o"]
    done = entry(script, "--query", "Q.npy", "--db", "X.npy", "--ranks", "R0.npy", "--gnd", "gnd.pkl", *extra,
                 cwd=features)
    error_line(done, "ranks R0.npy are empty (shape 0 x 4)")
    assert "mAP" not in done.stdout and not list(features.glob("o/*"))


@pytest.mark.parametrize("blocked, plots", [("sweep.json", False), ("sweep.csv", False), ("mAP_vs_M.png", True),
                                            ("heatmap_K_beta.png", True)])
def test_sweep_output_taken_by_a_directory_stops_before_any_work(features, entry, blocked, plots):
    if plots:
        pytest.importorskip("matplotlib")
    (features / "o" / blocked).mkdir(parents=True)
    done = entry("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--gnd", "gnd.pkl", *SWEEP[:-1],
                 *([] if plots else ["--no-plots"]), "--out-dir", "o", cwd=features)
    error_line(done, f"cannot write o/{blocked}", "it is a directory")
    assert done.stdout == ""
    assert [p.name for p in (features / "o").iterdir()] == [blocked]  # nothing written, no temporaries


def test_sweep_without_plots_ignores_a_directory_named_like_a_plot(features, entry):
    (features / "o" / "mAP_vs_M.png").mkdir(parents=True)
    done = entry("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--gnd", "gnd.pkl", *SWEEP, "--out-dir", "o",
                 cwd=features)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (features / "o").iterdir()) == ["mAP_vs_M.png", "sweep.csv", "sweep.json"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_feature_values_ws")


def distractor_rows(count=20, dim=2048):
    return unit_rows(np.random.default_rng(0).standard_normal((count, dim))).astype(np.float32)


def write_distractors(case, folder):
    if case == "float128_npy":
        path = folder / "d.npy"
        np.save(path, distractor_rows().astype(np.longdouble))
        return path, [f"dtype {np.dtype(np.longdouble).name}", "not one of float16, float32, float64"]
    if case == "sparse_pth":
        path = folder / "d.pth"
        rows = torch.from_numpy(distractor_rows())
        torch.save(torch.where(rows.abs() > 0.03, rows, torch.zeros(())).to_sparse(), path)
        return path, ["are a sparse_coo tensor", "to_dense()"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    pytest.param("float128_npy", marks=pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8,
                                                          reason="long double is float64 on this platform")),
    "sparse_pth",
])
def test_distractor_types_torch_cannot_search_are_refused(ws, tmp_path, entry, case):
    root, _ = ws
    path, fragments = write_distractors(case, tmp_path)
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "SupG.onemeval", "SupG.distractors_path", path,
                 cwd=tmp_path)
    error_line(done, path, *fragments)
    assert_nothing_written(out)
    assert not (out / "feature_cache").exists()


@pytest.fixture
def tiny_features(tmp_path):
    """Q.npy (3 x 8) and X.npy (10 x 8), float32, not normalised (ranks are checked before values)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "Q.npy", rng.standard_normal((3, 8)).astype(np.float32))
    np.save(tmp_path / "X.npy", rng.standard_normal((10, 8)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("corrupt,fragment", [
    (lambda r: r.__setitem__((1, 0), r[0, 0]), "twice"),   # a repeated index in query 0's column
    (lambda r: r.__setitem__((0, 2), 10), "only 10"),       # one past the database
    (lambda r: r.__setitem__((0, 1), -1), "negative"),
])
def test_rank_arrays_with_repeated_or_out_of_range_indices_are_refused(tiny_features, corrupt, fragment, entry):
    ranks = np.argsort(-np.load(tiny_features / "X.npy") @ np.load(tiny_features / "Q.npy").T, axis=0)
    corrupt(ranks)
    np.save(tiny_features / "R.npy", ranks)
    done = entry("rerank_features.py", "--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy", "--M", "4",
                 "--K", "1", "--out", "top.npy", cwd=tiny_features)
    error_line(done, "ranks", fragment)
    assert not (tiny_features / "top.npy").exists()


def test_ranks_shorter_than_m_are_refused_not_shortened(tmp_path, entry):
    """A top-3 --ranks with --M 5 would rerank 3 items, not 5: stopped naming both fixes; --M 3 runs."""
    rng = np.random.default_rng(0)
    Q, X = rng.standard_normal((3, 8)), rng.standard_normal((10, 8))
    Q, X = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (Q, X))
    np.save(tmp_path / "Q.npy", Q.astype(np.float32))
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "R.npy", np.argsort(-X @ Q.T, axis=0)[:3])
    args = ("--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy", "--K", 1, "--out", "top.npy")
    done = entry("rerank_features.py", *args, "--M", 5, cwd=tmp_path)
    error_line(done, "--ranks has 3 positions per query but --M is 5", "--M 3")
    assert not (tmp_path / "top.npy").exists()
    assert entry("rerank_features.py", *args, "--M", 3, cwd=tmp_path).returncode == 0
    assert np.load(tmp_path / "top.npy").shape == (3, 3)
    gnd = {"imlist": [f"d{i}" for i in range(10)], "qimlist": ["q0", "q1", "q2"],
           "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [1], "junk": []}] * 3}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    sweep = entry("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy", "--gnd", "gnd.pkl",
                  "--M", "2,5", "--K", "1", "--out-dir", "sweep", cwd=tmp_path)
    error_line(sweep, "--ranks has 3 positions per query but the largest --M is 5", "--M values up to 3")
