"""Outputs reached through links, special files, long names, stale temporaries and the example
writer: through the entry points. The one writer (test/outputs/writer.py) follows a link to its target
before it writes."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.entry_points import base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "links")


def digest(path):
    return Path(path).read_bytes()


@pytest.mark.parametrize("target", ["gnd", "image", "dangling image"])
def test_log_txt_linking_to_an_input_is_never_written_through(ws, tmp_path, entry, target):
    root, gnd = ws
    folder = root / "revisitop" / "roxford5k"
    pointed = {"gnd": folder / "gnd_roxford5k.pkl", "image": folder / "jpg" / f"{gnd['imlist'][0]}.jpg",
               "dangling image": folder / "jpg" / "new.jpg"}[target]
    before = digest(pointed) if pointed.exists() else None
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").symlink_to(pointed)
    error_line(entry("test.py", *base_args(root, out=out), cwd=tmp_path), "refusing to write", "a link to")
    assert (digest(pointed) if pointed.exists() else None) == before


def test_rerank_out_linking_to_its_database_file_is_refused(tmp_path, entry):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 4)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Q.npy", X[:2])
    (tmp_path / "top.npy").symlink_to(tmp_path / "X.npy")
    done = entry("rerank_features.py", "--query", tmp_path / "Q.npy", "--db", tmp_path / "X.npy", "--out",
                 tmp_path / "top.npy", cwd=tmp_path)
    error_line(done, "it is an input of this run (--db)")
    assert np.array_equal(np.load(tmp_path / "X.npy"), X)


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_an_output_name_taken_by_a_special_file_stops_before_any_work(tmp_path, entry, kind):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 4)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "top.npy"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "directory":
        out.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(out))
    done = entry("rerank_features.py", "--query", tmp_path / "X.npy", "--db", tmp_path / "X.npy", "--out", out,
                 cwd=tmp_path)
    error_line(done, "cannot write", {"fifo": "FIFO", "socket": "socket", "directory": "directory"}[kind])


def test_a_legal_long_output_name_is_written_and_a_too_long_one_refused_before_any_work(tmp_path, entry):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(tmp_path / "X.npy", X)
    legal = tmp_path / ("r" * 240 + ".npy")   # fits 255 bytes; its temporary name would not
    done = entry("rerank_features.py", "--query", tmp_path / "X.npy", "--db", tmp_path / "X.npy", "--out", legal,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(legal).shape == (6, 6)
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]
    error_line(entry("rerank_features.py", "--query", tmp_path / "X.npy", "--db", tmp_path / "X.npy", "--out",
                     tmp_path / ("r" * 300 + ".npy"), cwd=tmp_path), "more than the 255", "shorter")


def test_every_writer_removes_stale_temporaries_of_dead_processes(tmp_path, entry):
    from test.outputs.writer import temp_name

    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "top.npy"
    live = temp_name(out)      # this process: alive, kept
    dead = Path(str(temp_name(out)).replace(f".{os.getpid()}.", ".999999999."))  # no such pid
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    done = entry("rerank_features.py", "--query", tmp_path / "X.npy", "--db", tmp_path / "X.npy", "--out", out,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert live.exists() and not dead.exists()


@pytest.mark.parametrize("lock", ["directory", "fifo", "link"])
def test_a_lock_path_that_is_not_a_file_is_named(ws, tmp_path, entry, lock):
    root, _ = ws
    out = tmp_path / "out"
    out.mkdir()
    path = out / ".lock"
    {"directory": path.mkdir, "fifo": lambda: os.mkfifo(path),
     "link": lambda: path.symlink_to(root / "revisitop" / "roxford5k" / "gnd_roxford5k.pkl")}[lock]()
    error_line(entry("test.py", *base_args(root, out=out), cwd=tmp_path), str(path), "remove it")


def test_make_example_never_replaces_files(tmp_path, entry):
    mine = tmp_path / "ex" / "weights" / "CVPR2022_CVNet_R50.pyth"
    mine.parent.mkdir(parents=True)
    mine.write_text("my weights")
    done = entry("tools/make_example.py", tmp_path / "ex", "--db", "2", "--queries", "1", cwd=tmp_path)
    error_line(done, str(mine), "already exists")
    assert mine.read_text() == "my weights" and not (tmp_path / "ex" / "revisitop").exists()
