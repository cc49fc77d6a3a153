"""FIFOs, devices and sockets where the project reads give one line, never a hang (every reader
calls errors.readable_file first); closed stdout / stderr never cost the result; Ctrl-C in a
tool ends with one line."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tests.entry_points import ROOT, base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "special")


@contextmanager
def no_hang(seconds=60):
    """A read that blocks fails the test instead of hanging the suite."""
    def hung(_signum, _frame):
        raise TimeoutError("the entry point blocked on a special file")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("where", ["--cfg", "OUT_DIR/config.yaml", "OUT_DIR/log.txt", "OUT_DIR/results.json",
                                   "ground truth", "weights"])
def test_a_fifo_where_test_py_reads_gives_one_line(ws, tmp_path, entry, where):
    root, _ = ws
    out = tmp_path / "out"
    out.mkdir()
    args = base_args(root, out=out)
    if where == "--cfg":
        fifo = tmp_path / "c.yaml"
        args = ["--cfg", fifo, *args]
    elif where.startswith("OUT_DIR/"):
        fifo = out / where.split("/")[1]
    elif where == "weights":
        fifo = tmp_path / "w.pyth"
        args += ["TEST.WEIGHTS", fifo]
    else:
        data = tmp_path / "revisitop" / "roxford5k"
        data.mkdir(parents=True)
        os.symlink(root / "revisitop" / "roxford5k" / "jpg", data / "jpg")
        fifo = data / "gnd_roxford5k.pkl"
        args += ["TEST.DATA_DIR", tmp_path / "revisitop"]
    os.mkfifo(fifo)
    with no_hang():
        done = entry("test.py", *args, cwd=tmp_path)
    error_line(done, str(fifo), "FIFO")


def test_a_device_and_a_socket_as_feature_files_give_one_line(tmp_path, entry):
    import socket

    (tmp_path / "Q.npy").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "X.npy"))
    with no_hang():
        done = entry("rerank_features.py", "--query", tmp_path / "Q.npy", "--db", tmp_path / "X.npy", "--out",
                     tmp_path / "t.npy", cwd=tmp_path)
    error_line(done, "character device")
    server.close()


def test_an_image_that_is_a_fifo_is_named_before_any_work(ws, tmp_path, entry):
    root, gnd = ws
    data = tmp_path / "revisitop" / "roxford5k"
    (data / "jpg").mkdir(parents=True)
    os.symlink(root / "revisitop" / "roxford5k" / "gnd_roxford5k.pkl", data / "gnd_roxford5k.pkl")
    for name in gnd["imlist"] + gnd["qimlist"]:
        os.symlink(root / "revisitop" / "roxford5k" / "jpg" / f"{name}.jpg", data / "jpg" / f"{name}.jpg")
    first = data / "jpg" / f"{gnd['imlist'][0]}.jpg"
    first.unlink()
    os.mkfifo(first)
    with no_hang():
        done = entry("test.py", *base_args(root, out=tmp_path / "out"), "TEST.DATA_DIR", tmp_path / "revisitop",
                     cwd=tmp_path)
    error_line(done, "not regular files", str(first))


@pytest.mark.parametrize("closed", ["2>&-", ">&-"])
def test_a_closed_stream_never_costs_the_result(ws, tmp_path, closed):
    """A real shell closing the descriptor: the run completes, its log has both result lines."""
    root, _ = ws
    import shlex

    out = tmp_path / "out"
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, ROOT / "test.py", *base_args(root, out=out)])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(["bash", "-c", f"{command} {closed}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = [line for line in (out / "log.txt").read_text().splitlines() if "Retrieval results" in line]
    assert len(results) == 2


def test_ctrl_c_in_a_tool_ends_with_one_line_and_exit_130(ws, tmp_path):
    root, _ = ws
    process = subprocess.Popen([sys.executable, ROOT / "tools" / "check_setup.py", "TEST.WEIGHTS", root / "weights",
                                "TEST.DATA_DIR", root / "revisitop", "TEST.DATASET_LIST", "roxford5k"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the check finished before the interrupt")
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("interrupted"), err


def test_ctrl_c_while_the_interpreter_shuts_down_keeps_the_exit_code():
    """A Ctrl-C that lands after the work, while Python and torch tear down, is ignored by
    errors.exit_with: no traceback, and the run's own exit code, not "killed by SIGINT"."""
    code = (f"import atexit, os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from errors import exit_code_of, exit_with; "
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT)); "
            "exit_with(exit_code_of(lambda: None))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
