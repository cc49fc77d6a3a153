"""Faults: `kill -9` of test.py while it extracts and writes its outputs, then a restart.

What test.py writes, and why a kill cannot leave a partial file under a final name:
- <OUT_DIR>/<dataset>.npz (TEST.SAVE_FEATURES): np.savez to `<name>.tmp.npz`, then os.replace;
- <OUT_DIR>/feature_cache/<split>-<key>.npy and .json: temporary file, fsync, os.replace; a
  cache entry is also checked on load (shape, dtype, finite values) and recomputed when unusable;
- <OUT_DIR>/log.txt: appended a block at a time (one write + fsync). A killed run leaves its
  header without a "Retrieval results" line; every line is complete.
After kills at random points, the stale temporary files of the killed runs and planted damaged files
(a truncated npz / cache entry under the final name, as a copy interrupted by a crash would leave),
a restart gives exactly the arrays and log line of an uninterrupted run.

kill -9 of extract_rop1m.py at random points (resume byte-identical) is
tests/r1m/test_extract_rop1m.py::test_resume_after_kill_is_byte_identical (about 45 s on 2 cores).
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.entry_points import ROOT, base_args, make_workspace, run_test_py

ARRAYS = ("Q", "X", "ranks_global", "ranks", "mapE", "mapM", "mapH")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_crashes_ws")
    make_workspace(root, tmp_path_factory, n_db=8, n_query=3)
    return root


@pytest.fixture(scope="module")
def reference(ws):
    """An uninterrupted run: its saved arrays, its result line and its wall time."""
    out = ws / "reference"
    started = time.time()
    done = run_test_py(*base_args(ws, out=out), "TEST.SAVE_FEATURES", "True", cwd=ws)
    seconds = time.time() - started
    assert done.returncode == 0, done.stderr
    saved = dict(np.load(out / "roxford5k.npz"))
    results = [line for line in (out / "log.txt").read_text().splitlines() if line.startswith("Retrieval results")]
    return saved, results, seconds


def results_of(log_text):
    return [line for line in log_text.splitlines() if line.startswith("Retrieval results")]


def check_state(out, reference):
    """What a killed run left: never a partial file under a final name."""
    saved, results, _ = reference
    npz = out / "roxford5k.npz"
    if npz.exists():
        with np.load(npz) as got:
            for name in ARRAYS:
                np.testing.assert_array_equal(got[name], saved[name])
    for entry in (out / "feature_cache").glob("*.npy"):
        features = np.load(entry, allow_pickle=False)
        expected = saved["Q"] if entry.name.startswith("roxford5k_queries-") else saved["X"]
        np.testing.assert_array_equal(features, expected)
    log = out / "log.txt"
    if log.exists():
        text = log.read_text()
        assert text == "" or text.endswith("\n"), "a half-written log line"
        assert all(line in results for line in results_of(text))


def plant_damage(out):
    """Files a crash mid-write (or an interrupted copy) could leave."""
    (out / "feature_cache").mkdir(parents=True, exist_ok=True)
    (out / "roxford5k.npz.tmp.npz").write_bytes(b"PK\x03\x04 half a zip")
    (out / "roxford5k.npz").write_bytes(b"PK\x03\x04 truncated npz under the final name")
    entries = list((out / "feature_cache").glob("roxford5k_database-*.npy"))
    for entry in entries:  # truncate the real entry: same name, same header, rows missing
        data = entry.read_bytes()
        entry.write_bytes(data[:len(data) // 2])
        entry.with_name(entry.name + ".99999.tmp").write_bytes(data[:100])
    return len(entries)


def test_kill_9_at_random_points_then_restart_equals_an_uninterrupted_run(ws, reference, tmp_path):
    saved, results, seconds = reference
    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "test.py"), *map(str, base_args(ws, out=out)), "TEST.SAVE_FEATURES", "True"]
    rng = random.Random(1234)
    triggers = [  # kill points: just after the header, during cache writes, during the npz write, any time
        lambda: (out / "log.txt").is_file() and "config: " in (out / "log.txt").read_text(),
        lambda: any((out / "feature_cache").glob("roxford5k_database-*.tmp")),
        lambda: (out / "roxford5k.npz.tmp.npz").exists(),
        lambda: False,
    ]
    kills = 0
    for trigger in triggers:
        process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + rng.uniform(0.5, 1.5) * seconds
        while process.poll() is None and time.time() < deadline and not trigger():
            time.sleep(0.002)
        if process.poll() is None:
            time.sleep(rng.uniform(0, 0.02))
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=120)
        check_state(out, reference)
    assert kills >= 2, "the runs ended before the kills: nothing was tested"
    truncated = plant_damage(out)
    done = run_test_py(*base_args(ws, out=out), "TEST.SAVE_FEATURES", "True", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    if truncated:
        assert "roxford5k database: 8 features from the cache" not in done.stdout
    with np.load(out / "roxford5k.npz") as got:
        for name in ARRAYS:
            np.testing.assert_array_equal(got[name], saved[name])
    assert results_of((out / "log.txt").read_text())[-2:] == results
    check_state(out, reference)
