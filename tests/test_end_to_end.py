"""test.py run as a user runs it, on a generated revisitop dataset and a CVNet-layout checkpoint."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import write_checkpoint, write_revisitop
from tests.test_evaluate import official_compute_map

ROOT = Path(__file__).resolve().parents[1]
PAPER_FLAGS = "SupG.gemp SupG.rgem SupG.sgem SupG.relup SupG.rerank SupG.onemeval False"


def run_test_py(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "test.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_checkpoint(root / "weights" / "CVPR2022_CVNet_R50.pyth", depth=50, seed=5)
    gnds = {name: write_revisitop(root / "revisitop", name, n_db=10, n_query=3, seed=i)
            for i, name in enumerate(["roxford5k", "rparis6k"])}
    return root, gnds


def official_maps(ranks, gnd):
    protocols = {
        "E": [{"ok": g["easy"], "junk": g["junk"] + g["hard"]} for g in gnd["gnd"]],
        "M": [{"ok": g["easy"] + g["hard"], "junk": g["junk"]} for g in gnd["gnd"]],
        "H": [{"ok": g["hard"], "junk": g["junk"] + g["easy"]} for g in gnd["gnd"]],
    }
    return {name: official_compute_map(ranks, p, [1, 5, 10])[0] for name, p in protocols.items()}


def test_paper_command_line_end_to_end(workspace):
    root, gnds = workspace
    line = f"MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop {PAPER_FLAGS}"
    done = run_test_py(*line.split(), "TEST.SAVE_FEATURES", "True", "SupG.M", "6", "SupG.K", "2",
                       "TEST.NUM_WORKERS", "1", cwd=root)
    assert done.returncode == 0, done.stderr
    log = (root / "log.txt").read_text()
    assert log.count("Retrieval results: mAP E: ") == 2
    for name, gnd in gnds.items():
        saved = np.load(root / f"{name}.npz")
        Q, X = saved["Q"], saved["X"]
        assert Q.shape == (3, 2048) and X.shape == (10, 2048) and Q.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, rtol=1e-5)
        similarity = X @ Q.T
        ranked = np.take_along_axis(similarity, saved["ranks_global"], axis=0)
        assert (np.diff(ranked, axis=0) <= 1e-6).all()  # ranks_global is by descending X Q^T
        ranks = saved["ranks"]
        assert (np.sort(ranks, axis=0) == np.arange(10)[:, None]).all()
        np.testing.assert_array_equal(ranks[6:], saved["ranks_global"][6:])  # only the top M moves
        maps = official_maps(ranks, gnd)
        line = f"Retrieval results: mAP E: {maps['E'] * 100:.2f}, M: {maps['M'] * 100:.2f}, H: {maps['H'] * 100:.2f}"
        assert line in log
        for key in "EMH":
            assert saved[f"map{key}"] == pytest.approx(maps[key])


def test_missing_weights_is_one_line_exit_2(workspace, tmp_path):
    root, _ = workspace
    done = run_test_py("TEST.WEIGHTS", str(tmp_path / "none"), "TEST.DATA_DIR", str(root / "revisitop"),
                       "OUT_DIR", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "weights not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_key_is_one_line_exit_2(tmp_path):
    done = run_test_py("SupG.gemq", cwd=tmp_path)
    assert done.returncode == 2 and "SupG.gemq" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "log.txt").exists()


def test_help_lists_keys(tmp_path):
    done = run_test_py("--help", cwd=tmp_path)
    assert done.returncode == 0 and "SupG.onemeval" in done.stdout and "TEST.WEIGHTS" in done.stdout


def test_cache_serves_fresh_features_and_misses_on_flag_change(workspace, tmp_path):
    root, _ = workspace
    base = ["TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
            "TEST.DATASET_LIST", "roxford5k", "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0",
            "TEST.SAVE_FEATURES", "True", "SupG.M", "5", "SupG.K", "1"]

    def run(out, *extra):
        done = run_test_py(*base, "OUT_DIR", str(tmp_path / out), "TEST.CACHE_DIR", str(tmp_path / "cache"),
                           *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout, np.load(tmp_path / out / "roxford5k.npz")

    first, fresh = run("a")
    second, cached = run("b", "SupG.K", "3")
    assert "from the cache" not in first and second.count("from the cache") == 2
    assert np.array_equal(cached["Q"], fresh["Q"]) and np.array_equal(cached["X"], fresh["X"])
    uncached, direct = run("c", "TEST.CACHE", "False")
    assert np.array_equal(direct["X"], fresh["X"])
    changed, other = run("d", "SupG.rgem", "False")
    assert "from the cache" not in changed and not np.array_equal(other["X"], fresh["X"])
