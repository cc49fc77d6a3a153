"""Faults: dataset files that parse but hold values that would make a result silently wrong.

- GLDv2: a `Usage` other than Public / Private / Ignored (the query would be dropped), a test id twice
  in the solution (the last row would win), an id twice in index.csv / test.csv or as two image files
  (the image would count twice): one `error:` line naming the file and the id, nothing written;
- GLDv2 with an empty split (no Private queries): the result line reads `n/a (no queries)`, never
  `nan`; results.json records null and the npz NaN;
- custom folders holding two ground-truth files (gt.csv and gt.json): refused, naming both, unless
  one is named with `custom:<folder>::<file>`;
- the R1M image list saved with a UTF-8 byte-order mark: its first entry resolves like the others.
"""

import hashlib
import json

import numpy as np
import pytest

from errors import UserError
from test.data.custom import load_dataset_entry
from test.data.gldv2 import load_gldv2, read_solution
from test.data.synthetic import GLDV2_INDEX as INDEX
from test.data.synthetic import GLDV2_TEST as TEST
from test.data.synthetic import write_custom_folder, write_gldv2, write_r1m
from test.r1m.job import read_image_list, resolve_entry
from tests.entry_points import base_args, roxford_workspace, stops_before_any_work

SOLUTION = "retrieval_solution_v2.1.csv"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_values_ws")


def solution_text(*rows):
    return "id,images,Usage\n" + "".join(f"{r}\n" for r in rows)


def gldv2_case(case, root):
    """A GLDv2 root (test/synthetic.write_gldv2) with one bad value; returns (file, error fragments)."""
    write_gldv2(root)
    solution = root / SOLUTION
    good = solution.read_text().splitlines()[1:]  # t0 Public, t1 Private, t2 Ignored, t3 Public
    if case == "usage_lowercase":
        solution.write_text(solution_text(good[0], f"{TEST[1]},{INDEX[0]},private", *good[2:]))
        return solution, ["line 3", f"id {TEST[1]}", "Usage 'private'", "Public, Private or Ignored"]
    if case == "usage_unknown":
        solution.write_text(solution_text(*good[:3], f"{TEST[3]},{INDEX[2]},foo"))
        return solution, ["line 5", f"id {TEST[3]}", "Usage 'foo'", "Public, Private or Ignored"]
    if case == "solution_id_twice":
        solution.write_text(solution_text(*good, f"{TEST[0]},{INDEX[5]},Private"))
        return solution, ["line 6", f"test id {TEST[0]} is listed twice", "also line 2"]
    if case == "index_id_twice":
        listing = root / "index.csv"
        listing.write_text(listing.read_text() + f"{INDEX[2]},http://x/again\n")
        return listing, [f"id {INDEX[2]} is listed twice", "list each image once"]
    if case == "test_id_twice":
        listing = root / "test.csv"
        listing.write_text(listing.read_text() + f"{TEST[1]},http://x/again\n")
        return listing, [f"id {TEST[1]} is listed twice", "list each image once"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["usage_lowercase", "usage_unknown", "solution_id_twice", "index_id_twice",
                                  "test_id_twice"])
def test_bad_gldv2_value_stops_with_one_line(ws, tmp_path, entry, case):
    path, fragments = gldv2_case(case, tmp_path / "gld")
    stops_before_any_work(entry, ws[0], f"gldv2:{tmp_path / 'gld'}", tmp_path, path, *fragments,
                          subprocess=case == "usage_lowercase")


def test_gldv2_image_file_twice_is_refused(tmp_path):
    """Without index.csv the ids are the files found: a second file with the same id is refused."""
    write_gldv2(tmp_path, with_lists=False)
    stray = tmp_path / "index" / "extra" / f"{INDEX[1]}.jpg"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(UserError, match=f"image id {INDEX[1]} has two files"):
        load_gldv2(tmp_path)


def test_gldv2_usage_with_spaces_still_accepted(tmp_path):
    path = tmp_path / SOLUTION
    path.write_text(solution_text(f"{TEST[0]},{INDEX[0]}, Public ", f"{TEST[1]},None,Ignored "))
    assert read_solution(path) == {TEST[0]: ([INDEX[0]], "Public"), TEST[1]: ([], "Ignored")}


def test_gldv2_empty_split_prints_no_nan(ws, tmp_path, entry):
    """No Private query: the line says `Private n/a (no queries)`; results.json null, npz NaN."""
    root, _ = ws
    gld = tmp_path / "gld"
    write_gldv2(gld)
    solution = gld / SOLUTION
    solution.write_text(solution.read_text().replace(",Private", ",Ignored"))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, f"gldv2:{gld}", out=out), "TEST.SAVE_FEATURES", "True", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in (out / "log.txt").read_text().splitlines() if "GLDv2 retrieval mAP@100" in line]
    assert len(lines) == 1 and "Private n/a (no queries)" in lines[0], lines
    assert "nan" not in lines[0].lower()
    assert lines[0] in done.stdout and "nan" not in done.stdout.lower()
    results = json.loads((out / "results.json").read_text())[-1]["results"]
    assert results["Private"] is None and 0 <= results["Public"] <= 1 and results["All"] == results["Public"]
    saved = np.load(out / "gldv2.npz")
    assert np.isnan(saved["mapPrivate"]) and np.isfinite(saved["mapPublic"])


def test_custom_folder_with_two_ground_truths_stops_with_one_line(ws, tmp_path, entry):
    root, _ = ws
    folder = write_custom_folder(tmp_path / "photos")
    (folder / "gt.json").write_text(json.dumps([{"query": "queries/q0.jpg", "relevant": ["db/1.jpg"]}]))
    stops_before_any_work(entry, root, f"custom:{folder}", tmp_path, folder / "gt.csv", folder / "gt.json",
                          "several ground-truth files", "keep one", f"custom:{folder}::<file>")


def test_custom_folder_with_two_ground_truths_named_file_works(tmp_path):
    folder = write_custom_folder(tmp_path / "photos")
    (folder / "gt.json").write_text(json.dumps([{"query": "queries/q0.jpg", "relevant": ["db/1.jpg"]}]))
    for name, relevant in (("gt.csv", 0), ("gt.json", 1)):
        g = load_dataset_entry("unused", f"custom:{folder}::{folder / name}")
        assert g.gnd_path == folder / name and g.imlist[int(g.gnd[0]["easy"][0])] == f"db/{relevant}.jpg"


def test_r1m_image_list_with_byte_order_mark(tmp_path):
    entries = write_r1m(tmp_path, 6)
    listing = tmp_path / "revisitop1m.txt"
    data = b"\xef\xbb\xbf" + listing.read_bytes()
    listing.write_bytes(data)
    image_list = read_image_list(tmp_path)
    assert image_list.entries == entries
    assert image_list.sha256 == hashlib.sha256(data).hexdigest()  # over the raw bytes, BOM included
    assert (tmp_path / "jpg" / entries[0]).is_file()
    assert resolve_entry(image_list.root, image_list.entries[0]) == str(tmp_path / "jpg" / entries[0])
