"""Faults: bad ground truth (gnd_<dataset>.pkl), through `python test.py`.

Validation details are unit-tested in tests/data/test_gnd.py; here each case goes through the entry
point: exit 2, one `error:` line naming the pickle (or the dataset), no traceback, nothing written.
A query without positives in one protocol is not an error: it gets AP NaN there and the mean is
over the other queries, as revisitop's compute_map does; the logged numbers are checked against a
hand computation from the saved ranking.
"""

import pickle

import numpy as np
import pytest

from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace
from tests.payloads import SystemPayload


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_gnd_ws", n_db=9, n_query=3)


def edit(raw, case, marker):
    """Apply `case` to a copy of the good ground truth; returns (raw, fragments of the error)."""
    raw = pickle.loads(pickle.dumps(raw))
    if case == "code_payload":
        raw["gnd"][1]["junk"] = SystemPayload(marker)  # hidden deep inside a valid-looking file
        return raw, ["refusing to load posix.system"]
    if case == "missing_top_key":
        del raw["gnd"]
        return raw, ["missing key(s) ['gnd']"]
    if case == "missing_query_key":
        del raw["gnd"][2]["bbx"]
        return raw, ["gnd[2] is missing key(s) ['bbx']"]
    if case == "index_out_of_range":
        raw["gnd"][0]["hard"] = [3, 9]  # 9 database images: 0..8
        return raw, ["gnd[0]['hard'] has index 9 outside [0, 9)"]
    if case == "negative_index":
        raw["gnd"][1]["easy"] = [-1]
        return raw, ["gnd[1]['easy'] has index -1"]
    if case == "bbx_empty_after_int":
        raw["gnd"][0]["bbx"] = [3.2, 1.0, 3.9, 9.0]  # int(): x 3:3
        return raw, ["gnd[0]['bbx']", "empty after int() truncation"]
    if case == "bbx_negative":
        raw["gnd"][0]["bbx"] = [-4.0, 1.0, 10.0, 9.0]
        return raw, ["gnd[0]['bbx']", "negative"]
    if case == "index_beyond_int64":
        raw["gnd"][2]["junk"] = [1, 2 ** 70]
        return raw, ["gnd[2]['junk'] has an index beyond the 64-bit range"]
    if case == "bbx_beyond_float":
        raw["gnd"][1]["bbx"] = [0, 0, 10 ** 400, 5]
        return raw, ["gnd[1]['bbx'] has a coordinate beyond the float range"]
    if case == "not_a_dict":
        return [raw], ["expected a dict"]
    raise AssertionError(case)


GND_CASES = ["code_payload", "missing_top_key", "missing_query_key", "index_out_of_range", "negative_index",
             "bbx_empty_after_int", "bbx_negative", "not_a_dict", "index_beyond_int64",
             "bbx_beyond_float"]


def dataset_copy(ws, tmp_path):
    """A private DATA_DIR whose images are links to the shared ones."""
    root, _ = ws
    data = tmp_path / "revisitop" / "roxford5k"
    (data / "jpg").mkdir(parents=True)
    for image in (root / "revisitop" / "roxford5k" / "jpg").iterdir():
        (data / "jpg" / image.name).symlink_to(image)
    return tmp_path / "revisitop", data / "gnd_roxford5k.pkl"


@pytest.mark.parametrize("case", GND_CASES)
def test_bad_ground_truth_stops_with_one_line(ws, tmp_path, entry, case):
    root, good = ws
    data_dir, pkl = dataset_copy(ws, tmp_path)
    marker = tmp_path / "payload_ran"
    raw, fragments = edit(good, case, marker)
    pkl.write_bytes(pickle.dumps(raw))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "TEST.DATA_DIR", data_dir, cwd=tmp_path,
                 subprocess=case == "code_payload")
    error_line(done, pkl, *fragments)
    assert not marker.exists(), "unpickling ran the payload"
    assert_nothing_written(out)


def test_missing_ground_truth_file(ws, tmp_path, entry):
    root, _ = ws
    data_dir, pkl = dataset_copy(ws, tmp_path)
    out = tmp_path / "out"
    error_line(entry("test.py", *base_args(root, out=out), "TEST.DATA_DIR", data_dir, cwd=tmp_path),
               "ground-truth file not found", pkl)
    assert_nothing_written(out)


def test_unknown_dataset_name(ws, tmp_path, entry):
    root, _ = ws
    out = tmp_path / "out"
    error_line(entry("test.py", *base_args(root, dataset="roxford6k", out=out), cwd=tmp_path),
               "unknown dataset 'roxford6k'", "roxford5k", "rparis6k")
    assert_nothing_written(out)


def test_query_box_outside_the_image_stops_naming_it(ws, tmp_path, entry):
    """The box is valid as numbers but lies right of the image: found when the query is cropped
    (image sizes are not known before decoding), so the run has logged its header, not a result."""
    root, good = ws
    data_dir, pkl = dataset_copy(ws, tmp_path)
    raw = pickle.loads(pickle.dumps(good))
    raw["gnd"][1]["bbx"] = [5000.0, 0.0, 5100.0, 10.0]
    pkl.write_bytes(pickle.dumps(raw))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "TEST.DATA_DIR", data_dir, cwd=tmp_path)
    error_line(done, "query box [5000.0, 0.0, 5100.0, 10.0]", "roxford5k_q_01.jpg", "empty crop",
               preflight=False)
    log = (out / "log.txt").read_text()
    assert "Retrieval results" not in log
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") in (
        ["config.yaml", "log.txt"], ["config.yaml", "feature_cache", "log.txt"])
    assert not list(out.glob("feature_cache/roxford5k_queries-*"))


def hand_ap(ranking, ok, junk):
    """revisitop's compute_ap, written out: positions of the positives with the junk removed."""
    ok, junk = set(ok.tolist()), set(junk.tolist())
    positions, skipped = [], 0
    for position, image in enumerate(ranking.tolist()):
        if image in ok:
            positions.append(position - skipped)
        elif image in junk:
            skipped += 1
    ap = 0.0
    for j, rank in enumerate(positions):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) / len(ok) / 2
    return ap


def test_query_without_positives_in_one_protocol_is_nan_and_left_out(ws, tmp_path, entry):
    root, good = ws
    data_dir, pkl = dataset_copy(ws, tmp_path)
    raw = pickle.loads(pickle.dumps(good))
    raw["gnd"][0]["easy"] = []  # query 0: no positives in Easy (E ok = easy), still some in M and H
    pkl.write_bytes(pickle.dumps(raw))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), "TEST.DATA_DIR", data_dir, "TEST.SAVE_FEATURES", "True",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(out / "roxford5k.npz")
    ranks = saved["ranks"]
    maps = {}
    for key in "EMH":
        aps = []
        for q, g in enumerate(raw["gnd"]):
            easy, hard, junk = (np.asarray(g[k], dtype=np.int64) for k in ("easy", "hard", "junk"))
            ok, bad = {"E": (easy, np.r_[junk, hard]), "M": (np.r_[easy, hard], junk),
                       "H": (hard, np.r_[junk, easy])}[key]
            aps.append(hand_ap(ranks[:, q], ok, bad) if len(ok) else float("nan"))
        assert np.isnan(aps[0]) == (key == "E")
        maps[key] = np.nanmean(aps)
        assert saved[f"map{key}"] == pytest.approx(maps[key], abs=1e-12)
    line = f"Retrieval results: mAP E: {maps['E'] * 100:.2f}, M: {maps['M'] * 100:.2f}, H: {maps['H'] * 100:.2f}"
    assert line in (out / "log.txt").read_text()
