"""Faults: feature files, through `python test.py`.

- R1M distractor features (SupG.onemeval) with NaN / Inf rows are refused with the count of bad
  rows, of another dimension with both dimensions named (loader details: tests/r1m/test_r1m_features.py).
  These are found after the weights loaded, so the log holds the run's header, never a result line.
- An empty database or query list (a gnd with an empty imlist / qimlist) stops before any work.
- A feature-cache entry that is complete but poisoned with NaN is recomputed, not served.
"""

import pickle

import numpy as np
import pytest
import torch

from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_features_ws")


def distractors(count=20, dim=2048, seed=0):
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_case(case, tmp_path):
    if case == "nan_rows_npy":
        rows = distractors()
        rows[[2, 7, 19], 5] = np.nan
        path = tmp_path / "d.npy"
        np.save(path, rows)
        return path, ["3 of 20 rows contain NaN or Inf"]
    if case == "inf_row_pth":
        rows = distractors()
        rows[4, 0] = np.inf
        path = tmp_path / "d.pth"
        torch.save(torch.from_numpy(rows), path)
        return path, ["1 of 20 rows contain NaN or Inf"]
    if case == "wrong_dimension":
        path = tmp_path / "d.pth"
        torch.save(torch.from_numpy(distractors(dim=128)), path)
        return path, ["dimension 128 but the database descriptors have 2048"]
    if case == "empty_matrix":
        path = tmp_path / "d.npy"
        np.save(path, np.zeros((0, 2048), np.float32))
        return path, ["are empty (shape 0 x 2048)"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["nan_rows_npy", "inf_row_pth", "wrong_dimension", "empty_matrix"])
def test_bad_distractor_features_are_refused(ws, tmp_path, entry, case):
    root, _ = ws
    path, fragments = write_case(case, tmp_path)
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "SupG.onemeval", "SupG.distractors_path", path,
                 cwd=tmp_path, subprocess=case == "nan_rows_npy")
    error_line(done, path, *fragments)
    assert_nothing_written(out)  # caught before the header: the log holds only the error line
    assert not (out / "feature_cache").exists()


@pytest.mark.parametrize("key", ["imlist", "qimlist"])
def test_empty_database_or_query_list_stops_before_any_work(ws, tmp_path, entry, key):
    root, gnd = ws
    data = tmp_path / "revisitop" / "roxford5k"
    data.mkdir(parents=True)
    (data / "jpg").symlink_to(root / "revisitop" / "roxford5k" / "jpg")
    raw = {"imlist": list(gnd["imlist"]), "qimlist": list(gnd["qimlist"]), "gnd": [dict(g) for g in gnd["gnd"]]}
    raw[key] = []
    if key == "imlist":
        for g in raw["gnd"]:
            g["easy"], g["hard"], g["junk"] = [], [], []
    else:
        raw["gnd"] = []
    pkl = data / "gnd_roxford5k.pkl"
    pkl.write_bytes(pickle.dumps(raw))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "TEST.DATA_DIR", tmp_path / "revisitop", cwd=tmp_path)
    error_line(done, pkl, f"'{key}' is empty")
    assert_nothing_written(out)


def test_poisoned_cache_entry_is_recomputed_not_served(ws, tmp_path, entry):
    root, _ = ws
    out = tmp_path / "out"
    args = [*base_args(root, out=out), "TEST.SAVE_FEATURES", "True"]
    assert entry("test.py", *args, cwd=tmp_path).returncode == 0
    first = dict(np.load(out / "roxford5k.npz"))
    (entry_path,) = (out / "feature_cache").glob("roxford5k_database-*.npy")
    poisoned = np.load(entry_path)
    poisoned[1, 3] = np.nan
    np.save(entry_path, poisoned)  # complete, right shape and dtype, but not finite
    done = entry("test.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("from the cache") == 1  # the queries only
    again = np.load(out / "roxford5k.npz")
    for name in ("Q", "X", "ranks"):
        np.testing.assert_array_equal(again[name], first[name])
    assert np.isfinite(np.load(entry_path)).all()  # rewritten
