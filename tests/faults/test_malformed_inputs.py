"""Faults: malformed input files other than config, weights and gnd pickles, through `python test.py`
(and `python extract_rop1m.py` for the R1M image list).

- GLDv2 CSVs (retrieval_solution_v2.1.csv, index.csv, test.csv): missing columns, a wrong header,
  ragged rows, an empty file, non-UTF-8 bytes, a NUL byte;
- custom-dataset ground truths (gt.csv / gt.json): non-UTF-8 bytes, integers beyond the float or
  string-conversion limits, JSON nested too deeply for json.loads (RecursionError);
- R1M distractor files: an object array (.npy) that allow_pickle=False cannot load, an .npz archive,
  a sidecar nested too deeply;
- the R1M image list (revisitop1m.txt): non-UTF-8 bytes.

Each stops with exit code 2 and one `error:` line naming the file, no traceback; the dataset files
are read before the weights, so those stops leave no log line.
"""

import json

import cv2
import numpy as np
import pytest
import torch

from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace, stops_before_any_work

DEEP_JSON = "[" * 100000 + "]" * 100000
SOLUTION_HEADER = "id,images,Usage\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_inputs_ws")


def gldv2_case(case, root):
    """Write a GLDv2 root whose `case` file is broken; returns (that file, fragments of the error)."""
    root.mkdir()
    solution = root / "retrieval_solution_v2.1.csv"
    solution.write_text(SOLUTION_HEADER + "t1,i1 i2,Public\n")
    (root / "index.csv").write_text("id\ni1\ni2\n")
    (root / "test.csv").write_text("id\nt1\n")
    broken = {
        "solution_missing_column": (solution, "id,images\nt1,i1\n", ["lacks column(s) ['Usage']", "id,images,Usage"]),
        "solution_wrong_header": (solution, "test_id;relevant;usage\nt1;i1;Public\n",
                                  ["lacks column(s) ['id', 'images', 'Usage']", "found header test_id;relevant;usage"]),
        "solution_short_row": (solution, SOLUTION_HEADER + "t1,i1 i2,Public\nt2,i1\n",
                               ["line 3: 2 fields but the header has 3"]),
        "solution_long_row": (solution, SOLUTION_HEADER + "t1,i1,i2,Public\n", ["line 2: 4 fields but the header has 3",
                                                                                "quote fields"]),
        "solution_empty": (solution, "", ["lacks column(s)", "found an empty file"]),
        "solution_nul_byte": (solution, SOLUTION_HEADER + "t1,i1\0,Public\n", ["line 2 holds a NUL byte"]),
        "solution_huge_field": (solution, SOLUTION_HEADER + "t1," + "i" * 200000 + ",Public\n",
                                ["line 2 is not readable CSV", "field larger than field limit"]),
        "index_no_id_column": (root / "index.csv", "image\ni1\n", ["lacks column(s) ['id']", "found header image"]),
        "index_header_only": (root / "index.csv", "id\n", ["lists no ids"]),
        "test_ragged": (root / "test.csv", "id,url\nt1\n", ["line 2: 1 fields but the header has 2"]),
    }
    if case in broken:
        path, text, fragments = broken[case]
        path.write_text(text)
        return path, fragments
    if case == "solution_latin1":
        solution.write_bytes((SOLUTION_HEADER + "t1,i1 caf\xe9,Public\n").encode("latin-1"))
        return solution, ["is not UTF-8 text (byte 25)"]
    if case == "index_utf16":
        (root / "index.csv").write_text("id\ni1\n", encoding="utf-16")
        return root / "index.csv", ["is not UTF-8 text (byte 0)"]
    raise AssertionError(case)


GLDV2_CASES = ["solution_missing_column", "solution_wrong_header", "solution_short_row", "solution_long_row",
               "solution_empty", "solution_nul_byte", "solution_huge_field", "solution_latin1", "index_no_id_column",
               "index_header_only", "index_utf16", "test_ragged"]


@pytest.mark.parametrize("case", GLDV2_CASES)
def test_malformed_gldv2_csv_stops_with_one_line(ws, tmp_path, entry, case):
    path, fragments = gldv2_case(case, tmp_path / "gld")
    stops_before_any_work(entry, ws[0], f"gldv2:{tmp_path / 'gld'}", tmp_path, path, *fragments,
                          subprocess=case == "solution_short_row")


def custom_case(case, folder):
    folder.mkdir()
    if case == "csv_latin1":
        path = folder / "gt.csv"
        path.write_bytes("query,relevant\nq/caf\xe9.jpg,db/a.jpg\n".encode("latin-1"))
        return path, ["cannot read ground-truth CSV", "can't decode byte 0xe9"]
    if case == "json_latin1":
        path = folder / "gt.json"
        path.write_bytes('[{"query": "q/caf\xe9.jpg", "relevant": []}]'.encode("latin-1"))
        return path, ["cannot read ground-truth JSON", "can't decode byte 0xe9"]
    if case == "json_nested_list":
        path = folder / "gt.json"
        path.write_text(DEEP_JSON)
        return path, ["cannot read ground-truth JSON", "nested too deeply"]
    if case == "json_nested_object":
        path = folder / "gt.json"
        path.write_text('{"queries": ' + '{"a": ' * 100000 + "1" + "}" * 100001)
        return path, ["nested too deeply"]
    if case == "json_5000_digit_int":
        path = folder / "gt.json"
        path.write_text('[{"query": "q.jpg", "relevant": [], "bbox": [' + "9" * 5000 + ', 0, 1, 1]}]')
        return path, ["cannot read ground-truth JSON", "Exceeds the limit (4300 digits)"]
    if case == "json_bbox_beyond_float":
        path = folder / "gt.json"
        path.write_text('[{"query": "q.jpg", "relevant": [], "bbox": [' + "9" * 400 + ', 0, 1, 1]}]')
        for name in ("q.jpg", "db.jpg"):
            cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
        return path, ["query 0: bbox has a coordinate beyond the float range"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["csv_latin1", "json_latin1", "json_nested_list", "json_nested_object",
                                  "json_5000_digit_int", "json_bbox_beyond_float"])
def test_unreadable_custom_ground_truth_stops_with_one_line(ws, tmp_path, entry, case):
    path, fragments = custom_case(case, tmp_path / "photos")
    stops_before_any_work(entry, ws[0], f"custom:{tmp_path / 'photos'}", tmp_path, path, *fragments,
                          subprocess=case == "json_nested_list")


def distractor_case(case, folder):
    rows = np.random.default_rng(0).standard_normal((6, 2048)).astype(np.float32)
    if case == "object_npy":
        path = folder / "d.npy"
        np.save(path, np.array([rows[0], "a string", {"x": 1}], dtype=object), allow_pickle=True)
        return path, ["hold Python objects (dtype object)"]
    if case == "object_npz":
        path = folder / "d.npz"
        np.savez(path, X=np.array([{"x": 1}], dtype=object))
        return path, ["an .npz archive (arrays X)", "np.save"]
    if case == "float_npz":
        path = folder / "d.npz"
        np.savez(path, X=rows, ids=np.arange(6))
        return path, ["an .npz archive (arrays X, ids)"]
    if case == "nested_sidecar":
        path = folder / "d.pth"
        torch.save(torch.from_numpy(rows), path)
        (folder / "d.pth.json").write_text(DEEP_JSON)
        return folder / "d.pth.json", ["invalid sidecar", "RecursionError"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["object_npy", "object_npz", "float_npz", "nested_sidecar"])
def test_unloadable_distractor_file_stops_with_one_line(ws, tmp_path, entry, case):
    """Found after the weights loaded: the log holds the run's header and no result line."""
    root, _ = ws
    path, fragments = distractor_case(case, tmp_path)
    out = tmp_path / "out"
    distractors = path.with_suffix("") if case == "nested_sidecar" else path
    done = entry("test.py", *base_args(root, out=out), "SupG.onemeval", "SupG.distractors_path", distractors,
                 cwd=tmp_path, subprocess=case == "object_npy")
    error_line(done, path, *fragments)
    assert_nothing_written(out)  # caught before the header: the log holds only the error line


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_non_utf8_r1m_image_list_stops_with_one_line(tmp_path, tmp_path_factory, entry, encoding):
    from tests.entry_points import shared_weights

    data = tmp_path / "r1m"
    data.mkdir()
    listing = data / "revisitop1m.txt"
    listing.write_bytes("jpg/caf\xe9.jpg\njpg/b.jpg\n".encode(encoding))
    output = tmp_path / "feats.pth"
    done = entry("extract_rop1m.py", "--weight", shared_weights(tmp_path_factory), "--depth", "50",
                 "--data-dir", data, "--output", output, "--device", "cpu", cwd=tmp_path,
                 subprocess=encoding == "latin-1")
    error_line(done, listing, "is not UTF-8 text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1m"]


def test_deeply_nested_json_is_a_recursion_error():
    """The premise of the nested cases: json.loads recurses once per level and gives up."""
    with pytest.raises(RecursionError):
        json.loads(DEEP_JSON)
