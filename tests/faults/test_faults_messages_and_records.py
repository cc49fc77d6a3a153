"""Messages that name what the user set, values that stay on their log line, tools/check_setup.py
agreeing with test.py, and malformed files that reach one validated reader: through the entry
points."""

import json

import numpy as np
import pytest

from test.data.synthetic import write_custom_folder, write_gldv2
from tests.entry_points import base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "messages")


def test_a_value_with_line_breaks_stays_on_its_log_line(ws, tmp_path, entry):
    root, _ = ws
    out = tmp_path / "out"
    fake = "\n>> roxford5k: Retrieval results: mAP E: 99.0\r\u2028>> x\x85>> y\x1b[2K"
    done = entry("test.py", *base_args(root, out=out), "TEST.WEIGHTS", f"/nonexistent{fake}", cwd=tmp_path)
    error_line(done, "nonexistent")
    lines = (out / "log.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 2 and "\\n>> roxford5k" in lines[0] and "\\u2028" in lines[0]


def test_the_full_config_in_the_log_keeps_each_value_on_one_line(tmp_path):
    from config import load_cfg_from_args
    from test.outputs.provenance import config_lines

    cfg = load_cfg_from_args(["OUT_DIR", "a\n>> r: Retrieval results", "TEST.DATASET_LIST", "x\ny"])
    lines = config_lines(cfg)
    assert not any(">> r" in line and not line.strip().startswith("OUT_DIR") for line in lines)
    assert sum("Retrieval results" in line for line in lines) == 1


def test_a_path_value_shaped_like_a_key_is_a_value(tmp_path):
    from config import load_cfg_from_args
    from errors import UserError

    assert load_cfg_from_args(["OUT_DIR", "SupG.results"]).OUT_DIR == "SupG.results"
    with pytest.raises(UserError, match="write it as ./SupG.M"):
        load_cfg_from_args(["OUT_DIR", "SupG.M"])


def test_yaml_off_is_accepted_for_on_off_keys_and_explained_elsewhere(tmp_path):
    from config import load_cfg_from_args
    from errors import UserError

    (tmp_path / "a.yaml").write_text("TEST:\n  FOLD_BN: off\n  CHANNELS_LAST: on\n")
    cfg = load_cfg_from_args(["--cfg", str(tmp_path / "a.yaml")])
    assert (cfg.TEST.FOLD_BN, cfg.TEST.CHANNELS_LAST) == ("off", "on")
    (tmp_path / "b.yaml").write_text("OUT_DIR: off\n")
    with pytest.raises(UserError, match="quotes"):
        load_cfg_from_args(["--cfg", str(tmp_path / "b.yaml")])


@pytest.mark.parametrize("env, named", [({"RANK": "5", "WORLD_SIZE": "2"}, "RANK (environment"),
                                        ({"WORLD_SIZE": "0"}, "WORLD_SIZE (environment"),
                                        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK (environment")])
def test_torchrun_variables_are_named_not_flags(ws, tmp_path, entry, monkeypatch, env, named):
    root, _ = ws
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "r1m" / "jpg").mkdir(parents=True)
    (tmp_path / "r1m" / "revisitop1m.txt").write_text("a.jpg\n")
    done = entry("extract_rop1m.py", "--weight", root / "weights", "--depth", "50", "--data-dir", tmp_path / "r1m",
                 "--device", "cpu", "--output", tmp_path / "f.pth", cwd=tmp_path)
    line = error_line(done, named)
    assert "--shard-id" not in line and "--num-shards" not in line


@pytest.mark.parametrize("problem, fragment", [
    (["TEST.PRECISION", "fp16", "DEVICE", "cpu"], "fp16"),
    (["TEST.DATASET_LIST", "roxford5k,roxford5k"], "would write the same outputs"),
    ("weights in OUT_DIR", "it is an input of this run"),
])
def test_check_setup_refuses_what_test_py_refuses(ws, tmp_path, entry, problem, fragment):
    root, _ = ws
    args = base_args(root, out=tmp_path / "out")
    if problem == "weights in OUT_DIR":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "log.txt").symlink_to(root / "weights" / "CVPR2022_CVNet_R50.pyth")
        problem = ["TEST.WEIGHTS", tmp_path / "out" / "log.txt"]
    refused = entry("test.py", *args, *problem, cwd=tmp_path)
    error_line(refused, fragment)
    checked = entry("tools/check_setup.py", *args, *problem, cwd=tmp_path)
    assert checked.returncode == 2 and "ready" not in checked.stdout and "Traceback" not in checked.stderr
    assert fragment in checked.stderr


@pytest.mark.parametrize("content", ["[1, 2]", '{"format": "x"}', '{"format": "x", "fingerprint": [], '
                                     '"image_list": {}, "shard_size": 2, "feature_dim": 4}'])
def test_an_r1m_run_record_of_another_shape_gives_one_line(ws, tmp_path, entry, content):
    root, gnd = ws
    data = tmp_path / "r1m"
    (data / "jpg").mkdir(parents=True)
    (data / "jpg" / "a.jpg").symlink_to(root / "revisitop" / "roxford5k" / "jpg" / f"{gnd['imlist'][0]}.jpg")
    (data / "revisitop1m.txt").write_text("a.jpg\n")
    parts = tmp_path / "f.pth.parts"
    parts.mkdir()
    (parts / "run.json").write_text(content)
    done = entry("extract_rop1m.py", "--weight", root / "weights", "--depth", "50", "--data-dir", data,
                 "--device", "cpu", "--output", tmp_path / "f.pth", "--num-workers", "0", "TEST.SCALE_LIST", "1",
                 cwd=tmp_path)
    error_line(done, "run.json")


def test_an_r1m_record_reader_checks_shapes(tmp_path):
    from test.r1m.job import PART_FIELDS, read_record

    good = {"format": "f", "start": 0, "end": 2, "dim": 4, "data_bytes": 10, "data_sha256": "x",
            "failed": [{"index": 1, "reason": "r"}], "fingerprint": {}, "image_list": {"sha256": "s", "count": 2}}
    (tmp_path / "p.json").write_text(json.dumps(good))
    assert read_record(tmp_path / "p.json", PART_FIELDS) == good
    for change in ({"failed": ["x"]}, {"start": "0"}, {"image_list": {"count": 2}}, {"dim": True}):
        (tmp_path / "p.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError):
            read_record(tmp_path / "p.json", PART_FIELDS)


def test_an_npz_with_object_arrays_and_an_empty_database_give_one_line(tmp_path, entry):
    X = np.eye(4, dtype=np.float32)
    np.savez(tmp_path / "f.npz", Q=np.array([{"a": 1}], dtype=object), X=X)
    error_line(entry("rerank_features.py", "--features", tmp_path / "f.npz", "--out", tmp_path / "t.npy",
                     cwd=tmp_path), "Python objects")
    np.save(tmp_path / "X0.npy", np.zeros((0, 4), np.float32))
    np.save(tmp_path / "Q.npy", X[:1])
    error_line(entry("rerank_features.py", "--query", tmp_path / "Q.npy", "--db", tmp_path / "X0.npy", "--out",
                     tmp_path / "t.npy", cwd=tmp_path), "database features", "empty")
    assert not (tmp_path / "t.npy").exists()


def test_a_short_gldv2_id_is_named(ws, tmp_path, entry):
    root, _ = ws
    gld = tmp_path / "gld"
    write_gldv2(gld)
    listing = gld / "test.csv"
    listing.write_text(listing.read_text() + "ab,http://x/ab\n")
    done = entry("test.py", "TEST.WEIGHTS", root / "weights", "TEST.DATASET_LIST", f"gldv2:{gld}", "OUT_DIR",
                 tmp_path / "out", "DEVICE", "cpu", cwd=tmp_path)
    error_line(done, "'ab'", "GLDv2 test ids")


def test_csv_names_holding_spaces_and_own_positives(tmp_path, capsys):
    from test.data.custom import load_custom_dataset

    folder = write_custom_folder(tmp_path / "shop", seed=5)
    first = sorted((folder / "db").iterdir())[0]
    first.rename(folder / "db" / "my photo.jpg")
    text = (folder / "gt.csv").read_text()
    quoted = text.replace(f"db/{first.name}", '"""db/my photo.jpg"""').replace(f"db/{first.stem}", '"""db/my photo"""')
    (folder / "gt.csv").write_text(quoted)
    gnd = load_custom_dataset(folder)
    assert "db/my photo.jpg" in gnd.imlist
    plain = text.replace(f"db/{first.name}", "db/my photo.jpg").replace(f"db/{first.stem}", "db/my photo")
    (folder / "gt.csv").write_text(plain)
    again = load_custom_dataset(folder)
    assert [list(e["easy"]) for e in again.gnd] == [list(e["easy"]) for e in gnd.gnd]
    header, row, *rest = plain.splitlines()
    columns = header.split(",")
    cells = row.split(",")
    cells[columns.index("relevant")] = (cells[columns.index("relevant")] + " " + cells[0]).strip()
    (folder / "gt.csv").write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    capsys.readouterr()
    load_custom_dataset(folder)
    assert "list their own image as a positive" in capsys.readouterr().out
