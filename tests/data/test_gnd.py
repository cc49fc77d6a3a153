"""Ground truth: restricted unpickler, validation errors, real revisitop pickles, protocols."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from errors import UserError
from test.data.gnd import DATASETS, Gnd, RestrictedUnpickler, load_gnd, protocols, safe_load_pickle
from tests.payloads import OpenPayload, SystemPayload

REAL = Path(__file__).resolve().parents[3] / "shared/data/revisitop"
EXPECTED = {"roxford5k": (70, 4993), "rparis6k": (70, 6322)}


def real_gnd(dataset):
    path = REAL / f"gnd_{dataset}.pkl"
    if not path.is_file():
        pytest.skip(f"real ground truth not found at {path} (shared data not checked out)")
    return load_gnd(REAL, dataset, gnd_path=path)


def good_raw():
    return {
        "imlist": [f"db_{i}" for i in range(6)],
        "qimlist": ["q_0", "q_1"],
        "gnd": [
            {"bbx": [1.5, 2.0, 30.9, 40.2], "easy": [0, 1], "hard": [2], "junk": [3]},
            {"bbx": [0, 0, 10, 10], "easy": [], "hard": [4, 5], "junk": []},
        ],
    }


def write_gnd(tmp_path, raw, dataset="roxford5k", protocol=3):
    d = tmp_path / dataset
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"gnd_{dataset}.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    return path


def expect_error(tmp_path, raw, *fragments):
    path = write_gnd(tmp_path, raw)
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "roxford5k")
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg
    return msg


# --------------------------------------------------------------------------- real files

@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_real_ground_truth(dataset):
    g = real_gnd(dataset)
    nq, ndb = EXPECTED[dataset]
    assert (g.nq, g.n) == (nq, ndb)
    assert len(g.gnd) == nq and len(g.db_paths) == ndb and len(g.query_paths) == nq
    assert g.db_paths[0] == str(REAL / dataset / "jpg" / f"{g.imlist[0]}.jpg")
    assert g["qimlist"] is g.qimlist
    assert not set(g.qimlist) & set(g.imlist)
    for q in g.gnd:
        for k in ("easy", "hard", "junk"):
            assert q[k].dtype == np.int64 and q[k].ndim == 1
            assert q[k].size == 0 or (q[k].min() >= 0 and q[k].max() < ndb)
        x1, y1, x2, y2 = q["bbx"]
        assert all(isinstance(v, float) for v in q["bbx"])
        assert int(x2) > int(x1) and int(y2) > int(y1)

    p = protocols(g)
    assert set(p) == {"E", "M", "H"} and all(len(v) == nq for v in p.values())
    for i, q in enumerate(g.gnd):
        ne, nh, nj = len(q["easy"]), len(q["hard"]), len(q["junk"])
        assert (len(p["E"][i]["ok"]), len(p["E"][i]["junk"])) == (ne, nj + nh)
        assert (len(p["M"][i]["ok"]), len(p["M"][i]["junk"])) == (ne + nh, nj)
        assert (len(p["H"][i]["ok"]), len(p["H"][i]["junk"])) == (nh, nj + ne)
        assert set(p["M"][i]["ok"]) == set(q["easy"]) | set(q["hard"])
        assert set(p["E"][i]["junk"]) == set(q["junk"]) | set(q["hard"])
        assert set(p["H"][i]["junk"]) == set(q["junk"]) | set(q["easy"])
    assert sum(len(x["ok"]) for x in p["M"]) == sum(len(x["ok"]) for x in p["E"]) + sum(
        len(x["ok"]) for x in p["H"])


def test_real_pickles_need_no_globals():
    # the official files are plain containers: the unpickler gives the same data as pickle.load
    for dataset in EXPECTED:
        path = REAL / f"gnd_{dataset}.pkl"
        if not path.is_file():
            pytest.skip(f"real ground truth not found at {path}")
        assert safe_load_pickle(path) == pickle.loads(path.read_bytes())


# --------------------------------------------------------------------------- restricted unpickler

def test_malicious_open_payload_is_refused_and_not_run(tmp_path):
    # control: plain pickle really would create the file
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(OpenPayload(control))).close()
    assert control.exists()

    target = tmp_path / "pwned_open.txt"
    raw = good_raw()
    raw["gnd"][0]["junk"] = OpenPayload(target)  # hidden deep inside a valid-looking file
    path = write_gnd(tmp_path, raw)
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "roxford5k")
    # builtins.open is pickled by its real home, io.open
    assert str(ei.value) == (f"refusing to load {open.__module__}.open from {path}: ground-truth pickles may "
                             "only contain lists, dicts, numbers and numpy arrays")
    assert not target.exists()


def test_malicious_system_payload_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned_system.txt"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"gnd": SystemPayload(target)}, protocol=0))
    with pytest.raises(UserError) as ei:
        safe_load_pickle(path)
    msg = str(ei.value)
    assert msg.startswith("refusing to load ") and ".system from " in msg and str(path) in msg
    assert not target.exists()


def test_other_globals_refused(tmp_path):
    import collections
    import io

    for obj, name in [(collections.OrderedDict(a=1), "collections.OrderedDict"),
                      (np.random.default_rng(0), "numpy.random")]:
        with pytest.raises(UserError, match=f"refusing to load {name}"):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(obj)), path="x.pkl").load()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_arrays_load_with_every_protocol(tmp_path, protocol):
    raw = good_raw()
    raw["gnd"][0]["easy"] = np.array([0, 1], dtype=np.int32)
    raw["gnd"][0]["bbx"] = np.array([1.5, 2.0, 30.9, 40.2])
    raw["gnd"][1]["hard"] = [np.int64(4), 5]
    write_gnd(tmp_path, raw, protocol=protocol)
    g = load_gnd(tmp_path, "roxford5k")
    assert isinstance(g, Gnd)
    np.testing.assert_array_equal(g.gnd[0]["easy"], [0, 1])
    assert g.gnd[0]["easy"].dtype == np.int64
    assert g.gnd[0]["bbx"] == (1.5, 2.0, 30.9, 40.2)
    np.testing.assert_array_equal(g.gnd[1]["hard"], [4, 5])
    assert g.gnd[1]["easy"].dtype == np.int64 and g.gnd[1]["easy"].size == 0
    assert g.query_paths == [str(tmp_path / "roxford5k" / "jpg" / "q_0.jpg"),
                             str(tmp_path / "roxford5k" / "jpg" / "q_1.jpg")]
    assert g.bboxes[1] == (0.0, 0.0, 10.0, 10.0)


# --------------------------------------------------------------------------- validation errors

def test_missing_file(tmp_path):
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "rparis6k")
    msg = str(ei.value)
    assert str(tmp_path / "rparis6k" / "gnd_rparis6k.pkl") in msg and "revisitop" in msg
    assert "\n" not in msg


def test_truncated_pickle(tmp_path):
    path = write_gnd(tmp_path, good_raw())
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "roxford5k")
    assert str(path) in str(ei.value) and "truncated" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_empty_and_garbage_files(tmp_path):
    path = write_gnd(tmp_path, good_raw())
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_gnd(tmp_path, "roxford5k")
    path.write_bytes(b"this is not a pickle\n")
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "roxford5k")
    assert str(path) in str(ei.value) and "\n" not in str(ei.value)


def test_not_a_dict(tmp_path):
    expect_error(tmp_path, [1, 2, 3], "expected a dict")


def test_missing_key(tmp_path):
    raw = good_raw()
    del raw["qimlist"]
    expect_error(tmp_path, raw, "missing key(s) ['qimlist']")
    raw = good_raw()
    del raw["gnd"][1]["junk"]
    expect_error(tmp_path, raw, "gnd[1] is missing key(s) ['junk']")


def test_gnd_length_mismatch(tmp_path):
    raw = good_raw()
    raw["qimlist"].append("q_2")
    expect_error(tmp_path, raw, "len(gnd)=2", "len(qimlist)=3")


def test_index_out_of_range(tmp_path):
    raw = good_raw()
    raw["gnd"][1]["hard"] = [4, 6]  # imlist has 6 entries
    expect_error(tmp_path, raw, "gnd[1]['hard']", "index 6 outside [0, 6)")
    raw["gnd"][1]["hard"] = [-1]
    expect_error(tmp_path, raw, "index -1")
    raw["gnd"][1]["hard"] = [1.0]
    expect_error(tmp_path, raw, "integer")


def test_bbx_errors(tmp_path):
    raw = good_raw()
    raw["gnd"][0]["bbx"] = [10.2, 5.0, 10.9, 20.0]  # int(): x 10:10 -> empty
    expect_error(tmp_path, raw, "gnd[0]['bbx']", "empty after int() truncation")
    raw["gnd"][0]["bbx"] = [1, 2, 3]
    expect_error(tmp_path, raw, "must be 4 numbers")
    raw["gnd"][0]["bbx"] = [1, 2, "3", 4]
    expect_error(tmp_path, raw, "must be 4 numbers")
    raw["gnd"][0]["bbx"] = [-5.0, 2, 30, 40]
    expect_error(tmp_path, raw, "negative")
    raw["gnd"][0]["bbx"] = [0, 2, float("nan"), 40]
    expect_error(tmp_path, raw, "non-finite")


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError) as ei:
        load_gnd(tmp_path, "oxford105k")
    msg = str(ei.value)
    assert "'oxford105k'" in msg and all(d in msg for d in DATASETS)
