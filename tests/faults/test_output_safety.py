"""Outputs never collide, never land on an input, and belong to one run: through the entry points."""

import fcntl
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test.data.synthetic import write_checkpoint, write_custom_folder
from tests.entry_points import FAST, ROOT, base_args, error_line, out_files, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "outputs")[0]


def no_temporaries(folder):
    return [p.name for p in Path(folder).rglob(".*.tmp.*")]


def test_two_custom_folders_with_one_base_name_keep_their_own_outputs(ws, tmp_path, entry):
    a, b = write_custom_folder(tmp_path / "a" / "shop", seed=1), write_custom_folder(tmp_path / "b" / "shop", seed=2)
    args = ["TEST.WEIGHTS", ws / "weights", "TEST.DATASET_LIST", f"custom:{a},custom:{b}", "OUT_DIR",
            tmp_path / "out", "TEST.SAVE_FEATURES", "True", "TEST.VIS_QUERIES", "1", *FAST]
    done = entry("test.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    npz = sorted((tmp_path / "out").glob("shop_*.npz"))
    assert len(npz) == 2
    pictures = sorted(p.name for p in (tmp_path / "out" / "pictures").iterdir())
    assert len(pictures) == 2 and pictures == sorted(p.stem for p in npz)
    databases = [np.load(p)["X"] for p in npz]
    assert not np.array_equal(databases[0], databases[1])  # each file holds its own folder's features


def test_one_dataset_listed_twice_is_refused(ws, tmp_path, entry):
    args = base_args(ws, "roxford5k,roxford5k", out=tmp_path / "out")
    error_line(entry("test.py", *args, cwd=tmp_path), "would write the same outputs")


def test_out_dir_inside_a_dataset_folder_is_refused_before_any_work(ws, tmp_path, entry):
    folder = write_custom_folder(tmp_path / "shop")
    images_before = sorted(p.name for p in folder.rglob("*.jpg"))
    args = ["TEST.WEIGHTS", ws / "weights", "TEST.DATASET_LIST", f"custom:{folder}", "OUT_DIR",
            folder / "results", "TEST.VIS_QUERIES", "1", *FAST]
    error_line(entry("test.py", *args, cwd=tmp_path), "inside", "OUT_DIR")
    assert sorted(p.name for p in folder.rglob("*.jpg")) == images_before
    assert not list(folder.rglob("*.png")) and not list(folder.rglob("*.npy"))


def test_a_second_run_on_a_busy_out_dir_stops_at_once(ws, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running test.py holds
        done = subprocess.run([sys.executable, str(ROOT / "test.py"), *map(str, base_args(ws, out=out))],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    error_line(done, "another run is using", "OUT_DIR")
    assert out_files(out) == {}  # not even a log line: the log belongs to the other run


def test_rerank_features_refuses_to_write_over_its_own_input(tmp_path):
    rng = np.random.default_rng(0)
    Q, X = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((10, 8)).astype(np.float32)
    np.save(tmp_path / "Q.npy", Q)
    np.save(tmp_path / "X.npy", X)
    before = (tmp_path / "X.npy").read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "rerank_features.py"), "--query", "Q.npy", "--db", "X.npy",
                           "--M", "4", "--K", "1", "--out", "X.npy"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    error_line(done, "X.npy", "input", preflight=False)
    assert (tmp_path / "X.npy").read_bytes() == before and no_temporaries(tmp_path) == []


def test_non_finite_descriptors_stop_the_run_naming_the_step(tmp_path, entry):
    """Finite weights whose whitening layer overflows float32: no mAP may come out of it."""
    from test.data.synthetic import random_resnet, write_revisitop

    model = random_resnet(50, seed=3)
    with torch.no_grad():
        model.head.fc.weight.fill_(3e38)
    write_checkpoint(tmp_path / "weights" / "CVPR2022_CVNet_R50.pyth", model=model)
    write_revisitop(tmp_path / "revisitop", "roxford5k", n_db=4, n_query=2, divisor=32)
    args = base_args(tmp_path, out=tmp_path / "out")
    line = error_line(entry("test.py", *args, cwd=tmp_path), "extraction of roxford5k queries", "NaN or Inf",
                      preflight=False)
    assert "Retrieval results" not in (tmp_path / "out" / "log.txt").read_text()
    assert not list((tmp_path / "out").glob("*.npz")) and line


def test_ctrl_c_ends_with_one_line_exit_130_and_nothing_partial(ws, tmp_path):
    out = tmp_path / "out"
    args = [a for a in map(str, base_args(ws, out=out))]
    args[args.index("TEST.NUM_WORKERS") + 1] = "1"  # a DataLoader worker must not print a traceback either
    process = subprocess.Popen([sys.executable, str(ROOT / "test.py"), *args, "TEST.SAVE_FEATURES", "True"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.txt").is_file() or ">> roxford5k" not in (out / "log.txt").read_text():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").split("\n") if line.strip()]
    assert lines[-1].startswith("interrupted:") and sum(line.startswith("interrupted") for line in lines) == 1
    assert not list(out.glob("*.npz")) and no_temporaries(out) == []


@pytest.mark.parametrize("name", ["log.txt", "results.json", "config.yaml"])
def test_a_weights_file_named_like_a_run_output_is_refused_before_any_work(ws, tmp_path, entry, name):
    """The weights are copied into OUT_DIR under the name of a file test.py writes there: the run
    stops before its header, the file keeps its bytes and its name, and nothing is written."""
    from tests.entry_points import WEIGHTS_NAME

    out = tmp_path / "out"
    out.mkdir()
    weights = out / name
    weights.write_bytes((ws / "weights" / WEIGHTS_NAME).read_bytes())
    before = weights.read_bytes()
    args = [a for a in base_args(ws, out=out)]
    args[args.index("TEST.WEIGHTS") + 1] = weights
    error_line(entry("test.py", *args, cwd=tmp_path), f"refusing to write {out / name}",
               "it is an input of this run (TEST.WEIGHTS)")
    assert weights.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted({"log.txt", name})  # the run lock is gone too
    if name != "log.txt":  # the log holds the one error line, and nothing else
        lines = (out / "log.txt").read_text().splitlines()
        assert len(lines) == 1 and " -> error: refusing to write" in lines[0]


def test_a_ground_truth_named_results_json_is_refused_before_any_extraction(tmp_path, ws, entry):
    folder = write_custom_folder(tmp_path / "shop")
    out = tmp_path / "out"
    out.mkdir()
    gt = out / "results.json"
    gt.write_text('[{"query": "queries/q0.jpg", "relevant": ["db/0.jpg"]}]')  # gt.csv of the folder, as JSON
    before = gt.read_bytes()
    args = ["TEST.WEIGHTS", ws / "weights", "TEST.DATASET_LIST", f"custom:{folder}::{gt}", "OUT_DIR", out, *FAST]
    done = entry("test.py", *args, cwd=tmp_path)
    error_line(done, "refusing to write", "results.json", "it is an input of this run")
    assert gt.read_bytes() == before
    assert not (out / "feature_cache").exists() and not (out / "config.yaml").exists()


def test_the_cfg_file_in_out_dir_is_kept_and_rewritten_only_when_unchanged(ws, tmp_path, entry):
    """`--cfg OUT_DIR/config.yaml` reruns the same settings (config.yaml stays byte for byte); with an
    override the merged config would replace the file the user gave: refused before any work."""
    out = tmp_path / "out"
    assert entry("test.py", *base_args(ws, out=out), cwd=tmp_path).returncode == 0
    config = out / "config.yaml"
    before = config.read_bytes()
    again = entry("test.py", "--cfg", config, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert config.read_bytes() == before
    log_before = (out / "log.txt").read_text()
    done = entry("test.py", "--cfg", config, "SupG.K", "3", cwd=tmp_path)
    error_line(done, f"refusing to write {config}", "it is an input of this run (--cfg)")
    assert config.read_bytes() == before
    added = (out / "log.txt").read_text()[len(log_before):].splitlines()
    assert len(added) == 1 and " -> error: refusing to write" in added[0]


def wait_until_importing_torch(pid, timeout=30):
    """Return once torch's library is mapped into process `pid` (it is inside `import torch`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("script", ["test.py", "extract_rop1m.py", "rerank_features.py", "sweep.py"])
def test_ctrl_c_while_importing_torch_is_one_line_exit_130(tmp_path, script):
    """Ctrl-C during the imports (torch takes about a second) ends like Ctrl-C during the work:
    exit 130, one line, no traceback from inside an import."""
    child = subprocess.Popen([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_until_importing_torch(child.pid)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr
