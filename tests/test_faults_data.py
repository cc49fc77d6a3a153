"""Invalid data never becomes a number or a traceback: through the entry points."""

import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tests.faults_common import ROOT, base_args, error_line, roxford_workspace


def rerank_features(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "rerank_features.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def features(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "Q.npy", rng.standard_normal((3, 8)).astype(np.float32))
    np.save(tmp_path / "X.npy", rng.standard_normal((10, 8)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("corrupt,fragment", [
    (lambda r: r.__setitem__((1, 0), r[0, 0]), "twice"),   # a repeated index in query 0's column
    (lambda r: r.__setitem__((0, 2), 10), "only 10"),       # one past the database
    (lambda r: r.__setitem__((0, 1), -1), "negative"),
])
def test_rank_arrays_with_repeated_or_out_of_range_indices_are_refused(features, corrupt, fragment):
    ranks = np.argsort(-np.load(features / "X.npy") @ np.load(features / "Q.npy").T, axis=0)
    corrupt(ranks)
    np.save(features / "R.npy", ranks)
    done = rerank_features("--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy", "--M", 4, "--K", 1,
                           "--out", "top.npy", cwd=features)
    error_line(done, "ranks", fragment)
    assert not (features / "top.npy").exists()


def test_ranks_shorter_than_m_are_refused_not_shortened(tmp_path):
    """A top-3 --ranks with --M 5 would rerank 3 items, not 5: stopped naming both fixes; --M 3 runs."""
    rng = np.random.default_rng(0)
    Q, X = rng.standard_normal((3, 8)), rng.standard_normal((10, 8))
    Q, X = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (Q, X))
    np.save(tmp_path / "Q.npy", Q.astype(np.float32))
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "R.npy", np.argsort(-X @ Q.T, axis=0)[:3])
    args = ("--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy", "--K", 1, "--out", "top.npy")
    done = rerank_features(*args, "--M", 5, cwd=tmp_path)
    error_line(done, "--ranks has 3 positions per query but --M is 5", "--M 3")
    assert not (tmp_path / "top.npy").exists()
    assert rerank_features(*args, "--M", 3, cwd=tmp_path).returncode == 0
    assert np.load(tmp_path / "top.npy").shape == (3, 3)
    gnd = {"imlist": [f"d{i}" for i in range(10)], "qimlist": ["q0", "q1", "q2"],
           "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [1], "junk": []}] * 3}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    sweep = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--query", "Q.npy", "--db", "X.npy", "--ranks",
                            "R.npy", "--gnd", "gnd.pkl", "--M", "2,5", "--K", "1", "--out-dir", "sweep"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    error_line(sweep, "--ranks has 3 positions per query but the largest --M is 5", "--M values up to 3")


def big_png(width, height):
    """A PNG whose header claims width x height pixels (the data is tiny)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_image_header_beyond_opencvs_pixel_limit_gives_one_line(tmp_path_factory, tmp_path, entry):
    root, gnd = roxford_workspace(tmp_path_factory, "bigheader")
    path = root / "revisitop" / "roxford5k" / "jpg" / f"{gnd['imlist'][1]}.jpg"
    path.write_bytes(big_png(60000, 60000))  # cv2.imread reads by content, not by extension
    done = entry("test.py", *base_args(root, out=tmp_path / "out"), cwd=tmp_path)
    error_line(done, path.name, "more pixels than OpenCV allows", preflight=False)
