"""TEST.VIS_QUERIES selections: N (the first N), helped:N / hurt:N (by what reranking changed in a
protocol's AP), names:a,b or a list of names; bad ones stop before any work with one line."""

import csv
import re

import numpy as np
import pytest

import config
from config import VisSelection, load_cfg_from_args, vis_selection
from errors import UserError
from test.outputs.per_query import PerQuery, pick_queries
from tests.entry_points import (
    base_args,
    entry_module,
    roxford_workspace,
    stops_before_any_work,
)

RERANK = ["SupG.M", "6", "SupG.K", "2"]  # moves the APs of this workspace's queries (SupG.M 4 does not)


@pytest.mark.parametrize("text, expected", [
    ("0", VisSelection("first", count=0)),
    ("8", VisSelection("first", count=8)),
    ("helped:8", VisSelection("helped", count=8, protocol="M")),
    ("hurt:3:H", VisSelection("hurt", count=3, protocol="H")),
    ("names:a, b/c.jpg", VisSelection("names", names=("a", "b/c.jpg"))),
    ("['x,y', 'z']", VisSelection("names", names=("x,y", "z"))),
])
def test_command_line_forms(text, expected):
    cfg = load_cfg_from_args(["TEST.VIS_QUERIES", text])
    assert vis_selection(cfg.TEST.VIS_QUERIES) == expected


@pytest.mark.parametrize("text", ["-1", "helped:0", "helped", "hurt:2:X", "names:", "best:3", "3.5", "[1, 2]"])
def test_bad_forms_are_one_line_naming_the_key(text):
    with pytest.raises(UserError) as error:
        load_cfg_from_args(["TEST.VIS_QUERIES", text])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"bad value {text!r} for TEST.VIS_QUERIES")
    assert "helped:N" in message and "names:" in message


@pytest.mark.parametrize("value", ["helped:2:E", 5, ["q_00", "q_01"]])
def test_config_yaml_gives_the_selection_back(tmp_path, value):
    """The merged config dumped to config.yaml (what test.py writes) loads back with --cfg as the same
    selection, an int staying an int."""
    cfg = config.get_cfg_defaults()
    cfg.TEST.VIS_QUERIES = value
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = load_cfg_from_args(["--cfg", str(path)])
    assert again.TEST.VIS_QUERIES == value and again.dump() == cfg.dump()


def table(before, after):
    before, after = np.array(before, dtype=float), np.array(after, dtype=float)
    return PerQuery([f"q{i}" for i in range(len(before))], ("E", "M", "H"), before, after)


def test_helped_and_hurt_rank_by_the_change_in_one_protocol():
    nan = np.nan
    t = table([[0, .5, 0], [0, .25, 0], [0, .875, 0], [0, nan, 0], [0, .4, 0], [0, .25, .5]],
              [[0, .75, 0], [0, .75, 0], [0, .25, 0], [0, nan, 0], [0, .4, 0], [0, .5, .125]])
    # M gains (exact in binary): +.25, +.5, -.625, nan, 0, +.25 (ties keep query order; no change
    # and NaN never count)
    assert pick_queries(VisSelection("helped", count=8), t) == [1, 0, 5]
    assert pick_queries(VisSelection("helped", count=2), t) == [1, 0]
    assert pick_queries(VisSelection("hurt", count=8), t) == [2]
    assert pick_queries(VisSelection("hurt", count=8, protocol="H"), t) == [5]
    assert pick_queries(VisSelection("first", count=4), t) == [0, 1, 2, 3]
    assert pick_queries(VisSelection("first", count=99), t) == list(range(6))
    assert pick_queries(VisSelection("names", names=("q4", "q1")), t) == [1, 4]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root, gnd = roxford_workspace(tmp_path_factory, "vis_selection", n_db=6, n_query=3)
    return root, gnd


def run(ws, out, *extra):
    root, _ = ws
    argv = [str(a) for a in (*base_args(root, out=out), "TEST.CACHE_DIR", root / "cache", *RERANK, *extra)]
    assert entry_module("test.py").main(argv) == 0
    return out


def gains(out, protocol="M"):
    with open(out / "per_query_roxford5k.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [float(r[f"ap_{protocol}_after"]) - float(r[f"ap_{protocol}_before"]) for r in rows]


def pictured(out):
    """Query indices of the pictures, in the order index.html shows them."""
    index = (out / "pictures" / "roxford5k" / "index.html").read_text()
    shown = [int(name[:3]) for name in re.findall(r'src="([^"]+\.png)"', index)]
    assert sorted(p.name for p in (out / "pictures" / "roxford5k").glob("*.png")) == sorted(
        re.findall(r'src="([^"]+\.png)"', index))
    return shown


def test_helped_and_hurt_through_test_py(ws, tmp_path):
    picked = {}
    for kind in ("helped", "hurt"):
        out = run(ws, tmp_path / kind, "TEST.VIS_QUERIES", f"{kind}:2")
        change = gains(out)
        sign = 1 if kind == "helped" else -1
        expected = sorted((q for q, g in enumerate(change) if sign * g > 0), key=lambda q: -sign * change[q])[:2]
        picked[kind] = pictured(out)
        assert picked[kind] == expected
        log = (out / "log.txt").read_text()
        assert f"pictures of {len(expected)} queries ({kind}:2: the {len(expected)} whose M AP reranking" in log
    assert picked["helped"] or picked["hurt"]  # this workspace's reranking changes some AP


def test_named_queries_through_test_py(ws, tmp_path):
    _, gnd = ws
    name = gnd["qimlist"][2]
    out = run(ws, tmp_path / "out", "TEST.VIS_QUERIES", f"names:{name}")
    assert pictured(out) == [2]
    assert f"named: {name}" in (out / "log.txt").read_text()


def test_first_n_as_before(ws, tmp_path):
    out = run(ws, tmp_path / "out", "TEST.VIS_QUERIES", "2")
    assert pictured(out) == [0, 1]
    assert "pictures of 2 queries: " in (out / "log.txt").read_text()


@pytest.mark.parametrize("extra, fragments", [
    (["TEST.VIS_QUERIES", "names:nowhere"], ["TEST.VIS_QUERIES", "no query named 'nowhere'", "roxford5k_q_00"]),
    (["TEST.VIS_QUERIES", "helped:3", "SupG.rerank", "False"], ["TEST.VIS_QUERIES helped:3", "SupG.rerank True"]),
    (["TEST.VIS_QUERIES", "worst:3"], ["bad value 'worst:3' for TEST.VIS_QUERIES"]),
])
def test_bad_selections_stop_before_any_work(ws, tmp_path, entry, extra, fragments):
    stops_before_any_work(entry, ws[0], "roxford5k", tmp_path, *fragments, extra=extra)
