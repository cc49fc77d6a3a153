"""Loading the R1M distractor features: formats, sidecar fingerprint check, validation."""

import json

import numpy as np
import pytest
import torch

from errors import UserError
from test.r1m.features import load_r1m_features, scan_rows, sidecar_path
from test.r1m.search import search_with_r1m

FINGERPRINT = {"depth": 50, "gemp": True, "rgem": True, "scales": [0.7071, 1.0, 1.4142],
               "weights_sha256": "ab" * 32}


def matrix(n=300, dim=12, seed=0):
    """Values k/8 (exact in float16); two zero rows like failed R1M images."""
    rng = np.random.default_rng(seed)
    m = (rng.integers(-4, 5, size=(n, dim)) / 8).astype(np.float32)
    m[[4, 9]] = 0
    return m


def write_sidecar(path, m, fingerprint=FINGERPRINT, **extra):
    meta = {"fingerprint": fingerprint, "count": int(m.shape[0]), "dim": int(m.shape[1]), "failed": [4, 9]}
    meta.update(extra)
    sidecar_path(path).write_text(json.dumps(meta))


@pytest.fixture
def files(tmp_path):
    m = matrix()
    paths = {}
    paths["official"] = tmp_path / "feats_1m_RN50.pth"
    torch.save(torch.from_numpy(m), paths["official"])
    paths["legacy"] = tmp_path / "legacy.pth"
    torch.save(torch.from_numpy(m), paths["legacy"], _use_new_zipfile_serialization=False)
    paths["ours"] = tmp_path / "ours.pth"
    torch.save(torch.from_numpy(m), paths["ours"])
    write_sidecar(paths["ours"], m)
    paths["half_pth"] = tmp_path / "half.pth"
    torch.save(torch.from_numpy(m).half(), paths["half_pth"])
    paths["npy32"] = tmp_path / "f32.npy"
    np.save(paths["npy32"], m)
    paths["npy16"] = tmp_path / "f16.npy"
    np.save(paths["npy16"], m.astype(np.float16))
    return m, paths


def test_all_formats_load_and_give_identical_search_results(files):
    m, paths = files
    rng = np.random.default_rng(1)
    Q = torch.from_numpy((rng.integers(-4, 5, size=(5, 12)) / 8).astype(np.float32))
    X = torch.from_numpy((rng.integers(-4, 5, size=(40, 12)) / 8).astype(np.float32))
    wanted = [rng.permutation(40)[:8] for _ in range(5)]
    ref = None
    for name, path in paths.items():
        loaded, info = load_r1m_features(path, expected_fingerprint=FINGERPRINT, dim=12)
        assert tuple(loaded.shape) == m.shape and info.count == 300 and info.dim == 12
        assert info.zero_rows == 2
        values = loaded.float().numpy() if isinstance(loaded, torch.Tensor) else np.asarray(loaded, np.float32)
        np.testing.assert_array_equal(values, m)
        res = search_with_r1m(Q, X, loaded, 25, wanted, chunk_rows=32)
        if ref is None:
            ref = res
        assert torch.equal(res.top, ref.top), name
        assert all(np.array_equal(a, b) for a, b in zip(res.positions, ref.positions)), name
        assert "distractors: 300 x 12" in info.describe()
    infos = {name: load_r1m_features(path)[1] for name, path in paths.items()}
    assert infos["official"].format == "torch" and infos["official"].mmap and infos["official"].sidecar is None
    assert infos["legacy"].format == "torch-legacy" and not infos["legacy"].mmap
    assert infos["npy16"].format == "npy" and infos["npy16"].dtype == "float16" and infos["npy16"].mmap
    assert isinstance(load_r1m_features(paths["npy32"])[0], np.memmap)
    ours = load_r1m_features(paths["ours"], expected_fingerprint=FINGERPRINT)[1]
    assert ours.fingerprint_checked and ours.failed == (4, 9) and ours.fingerprint == FINGERPRINT


def test_mismatched_sidecar_fingerprint_is_refused(files):
    _, paths = files
    expected = dict(FINGERPRINT, rgem=False)
    with pytest.raises(UserError) as error:
        load_r1m_features(paths["ours"], expected_fingerprint=expected)
    message = str(error.value)
    assert "rgem: True vs False" in message and "SupG.distractors_check False" in message
    assert "depth" not in message and "weights_sha256" not in message
    assert "\n" not in message
    # the override, and official files (no sidecar) are not checked
    _, info = load_r1m_features(paths["ours"], expected_fingerprint=expected, check=False)
    assert not info.fingerprint_checked
    load_r1m_features(paths["official"], expected_fingerprint=expected)


def test_nan_and_inf_are_refused_with_the_count(tmp_path):
    m = matrix()
    m[[3, 50]] = np.nan
    m[100, 2] = np.inf
    m[101, 0] = -np.inf
    for path, save in ((tmp_path / "bad.pth", lambda p: torch.save(torch.from_numpy(m), p)),
                       (tmp_path / "bad.npy", lambda p: np.save(p, m)),
                       (tmp_path / "bad16.npy", lambda p: np.save(p, m.astype(np.float16)))):
        save(path)
        with pytest.raises(UserError, match=r"4 of 300 rows contain NaN or Inf"):
            load_r1m_features(path)
        load_r1m_features(path, scan=False)   # the scan can be left to the search
    # several scan blocks
    with pytest.raises(UserError, match="4 of 300 rows"):
        scan_rows(np.load(tmp_path / "bad.npy", mmap_mode="r"), scan_bytes=7 * 12 * 4)


def test_wrong_dimension_is_refused(files):
    _, paths = files
    with pytest.raises(UserError, match="dimension 12 but the database descriptors have 2048"):
        load_r1m_features(paths["official"], dim=2048)


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"not found: .*nope\.pth.*extract_rop1m\.py"):
        load_r1m_features(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="directory"):
        load_r1m_features(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match="file is empty"):
        load_r1m_features(tmp_path / "empty.pth")
    np.save(tmp_path / "zero_rows.npy", np.zeros((0, 12), dtype=np.float32))
    with pytest.raises(UserError, match="are empty"):
        load_r1m_features(tmp_path / "zero_rows.npy")


@pytest.mark.parametrize("obj,match", [
    (torch.zeros(10), "shape"),
    (torch.zeros(3, 4, 5), "shape"),
    (torch.zeros(10, 4, dtype=torch.int64), "dtype"),
    ({"feats": torch.zeros(3, 4)}, "dict"),
    (torch.eye(10, 4).to_sparse(), "sparse_coo tensor, not a dense"),
])
def test_not_a_float_matrix_is_refused(tmp_path, obj, match):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(UserError, match=match):
        load_r1m_features(path)


def test_unreadable_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file at all" * 10)
    with pytest.raises(UserError, match="cannot read distractor features"):
        load_r1m_features(garbage)
    truncated = tmp_path / "trunc.pth"
    torch.save(torch.zeros(100, 8), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot read"):
        load_r1m_features(truncated)
    np.save(tmp_path / "ints.npy", np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(UserError, match="dtype int32"):
        load_r1m_features(tmp_path / "ints.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match=r"hold Python objects \(dtype object\)"):
        load_r1m_features(tmp_path / "obj.npy")
    np.savez(tmp_path / "floats.npz", X=np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(UserError, match=r"are an .npz archive \(arrays X\)"):
        load_r1m_features(tmp_path / "floats.npz")


def test_bad_sidecars_are_refused(files):
    m, paths = files
    path = paths["ours"]
    sidecar_path(path).write_text("{not json")
    with pytest.raises(UserError, match="invalid sidecar .*JSON"):
        load_r1m_features(path)
    write_sidecar(path, m, count=299)
    with pytest.raises(UserError, match="300 x 12 but the sidecar .* says 299 x 12"):
        load_r1m_features(path)
    sidecar_path(path).write_text(json.dumps({"count": 300, "dim": 12, "failed": []}))
    with pytest.raises(UserError, match=r"missing key\(s\) \['fingerprint'\]"):
        load_r1m_features(path)
    write_sidecar(path, m, failed=[300])
    with pytest.raises(UserError, match="outside"):
        load_r1m_features(path)
    write_sidecar(path, m, failed=["x"])
    with pytest.raises(UserError, match="row numbers"):
        load_r1m_features(path)
    write_sidecar(path, m, output_bytes=path.stat().st_size + 1)
    with pytest.raises(UserError, match="incomplete or replaced"):
        load_r1m_features(path)


def test_extractor_sidecar_layout_is_accepted(files):
    """extract_rop1m.py lists failed images as objects and records the file size."""
    m, paths = files
    path = paths["ours"]
    write_sidecar(path, m, failed=[{"index": 4, "path": "a.jpg", "reason": "unreadable"},
                                   {"index": 9, "path": "b.jpg", "reason": "unreadable"}],
                  failed_count=2, output_bytes=path.stat().st_size, format="r1m-features/1")
    _, info = load_r1m_features(path, expected_fingerprint=FINGERPRINT)
    assert info.failed == (4, 9) and info.fingerprint_checked and info.zero_rows == 2
