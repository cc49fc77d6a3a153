"""extract_rop1m.py: resume after kill -9, shards + merge, unreadable images, refusals, format.

Byte-identity is checked against an uninterrupted in-process run on a generated revisitop1m
layout (tiny images, a random ResNet-50 checkpoint, one scale, parts of 4 images)."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import extract_rop1m
from config import load_cfg_from_args
from test.build import build_descriptor, descriptor_fingerprint
from test.data.images import RevisitopImages, jpeg_truncated
from test.data.synthetic import textured_image, write_checkpoint, write_r1m
from test.extraction.extract import extract_features
from test.r1m.job import part_ranges, parts_of_shard, resolve_entry

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "extract_rop1m.py"
FAST = ["--shard-size", "4", "--num-workers", "0", "--batch-size", "4", "--device", "cpu", "TEST.SCALE_LIST", "1"]


def args_for(ws, output, *extra, weights=None):
    return ["--weight", str(weights or ws["weights"]), "--depth", "50", "--data-dir", str(ws["data"]),
            "--output", str(output), *FAST, *extra]


def run_main(argv, capsys):
    code = extract_rop1m.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spawn(argv, env=None, **kwargs):
    full_env = {**os.environ, **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if key not in (env or {}):
            full_env.pop(key, None)
    return subprocess.Popen([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def kill9(process):
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


def wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"process ended early: {process.communicate()}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("rop1m")
    weights = root / "weights" / "CVPR2022_CVNet_R50.pyth"
    model = write_checkpoint(weights, depth=50, seed=3)
    write_checkpoint(root / "other.pyth", depth=50, seed=4)
    entries = write_r1m(root / "data", 16)
    return {"root": root, "model": model, "weights": weights, "other": root / "other.pyth", "data": root / "data",
            "entries": entries}


@pytest.fixture(scope="module")
def reference(ws):
    """An uninterrupted single-process run (in-process; weights given as a directory)."""
    output = ws["root"] / "ref" / "feats.pth"
    assert extract_rop1m.main(args_for(ws, output, weights=ws["weights"].parent)) == 0
    return output.read_bytes(), json.loads((output.parent / "feats.pth.json").read_text()), output


def test_output_format_and_sidecar(ws, reference):
    data, sidecar, output = reference
    features = torch.load(output, weights_only=True)
    assert isinstance(features, torch.Tensor) and features.dtype == torch.float32
    assert features.shape == (16, 2048)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(16), rtol=0, atol=1e-5)
    assert torch.equal(torch.load(output, weights_only=True, mmap=True), features)
    cfg = load_cfg_from_args(["MODEL.DEPTH", "50", "TEST.SCALE_LIST", "1"])
    assert sidecar["fingerprint"] == descriptor_fingerprint(cfg, ws["weights"])
    assert sidecar["depth"] == 50 and sidecar["scales"] == [1.0]
    assert sidecar["count"] == 16 and sidecar["dim"] == 2048 and sidecar["failed"] == []
    list_bytes = (ws["data"] / "revisitop1m.txt").read_bytes()
    assert sidecar["image_list"] == {"file": "revisitop1m.txt", "count": 16,
                                     "sha256": hashlib.sha256(list_bytes).hexdigest()}
    assert sidecar["output_sha256"] == hashlib.sha256(data).hexdigest()
    # entries relative to ROOT/jpg and to ROOT resolve to the same folder
    assert all(os.path.isfile(resolve_entry(str(ws["data"]), e)) for e in ws["entries"])


def test_rerun_after_completion_does_nothing(ws, reference, capsys):
    _, _, output = reference
    before = output.stat().st_mtime_ns
    code, out, _ = run_main(args_for(ws, output, weights=ws["weights"].parent), capsys)
    assert code == 0 and "already complete" in out and output.stat().st_mtime_ns == before


def test_resume_after_kill_is_byte_identical(ws, reference, tmp_path):
    data, sidecar, _ = reference
    output = tmp_path / "killed.pth"
    parts = tmp_path / "killed.pth.parts"
    started = time.time()
    process = spawn(args_for(ws, output))
    wait_for(parts / "part-000000.json", process)
    first_part = time.time() - started
    kill9(process)
    assert not output.exists() and not (parts / "part-000003.json").exists()
    # leftovers of a kill mid-write are never taken for finished parts
    (parts / ".part-000002.npy.tmp.otherhost.12345.abcd").write_bytes(b"\x93NUMPY half")
    (parts / "part-000003.npy").write_bytes(b"\x93NUMPY truncated")
    code, out, err = finish(spawn(args_for(ws, output)))
    assert code == 0, err
    assert "already done" in out and output.read_bytes() == data
    assert json.loads((tmp_path / "killed.pth.json").read_text())["output_sha256"] == sidecar["output_sha256"]

    # kill -9 at random points, again and again: still the same bytes
    output = tmp_path / "loop.pth"
    rng = random.Random(7)
    for _ in range(2):
        process = spawn(args_for(ws, output))
        time.sleep(rng.uniform(0.7, 1.6) * first_part)
        if process.poll() is None:
            kill9(process)
        else:
            process.communicate()
    code, _, err = finish(spawn(args_for(ws, output)))
    assert code == 0, err
    assert output.read_bytes() == data


def test_shards_merged_equal_a_single_run(ws, reference, tmp_path, capsys):
    data, sidecar, _ = reference
    output = tmp_path / "sharded.pth"
    parts = tmp_path / "sharded.pth.parts"
    # torchrun-style: RANK / WORLD_SIZE in the environment select the shard
    code, out, err = finish(spawn(args_for(ws, output), env={"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}))
    assert code == 0, err
    assert "shard 1 of 3" in out and "still being extracted" in out
    assert sorted(p.name for p in parts.glob("part-*.json")) == ["part-000001.json"]
    assert not output.exists()

    code, _, err = run_main(args_for(ws, output, "--merge-only"), capsys)
    assert code == 2 and "3 of 4 parts are not done" in err

    code, _, _ = run_main(args_for(ws, output, "--num-shards", "3", "--shard-id", "2"), capsys)
    assert code == 0 and not output.exists()
    code, out, _ = run_main(args_for(ws, output, "--num-shards", "3", "--shard-id", "0"), capsys)
    assert code == 0 and "wrote" in out  # the last shard to finish merges
    assert output.read_bytes() == data
    merged = json.loads((tmp_path / "sharded.pth.json").read_text())
    assert {k: v for k, v in merged.items() if k != "features"} == {k: v for k, v in sidecar.items() if k != "features"}

    sidecar_bytes = (tmp_path / "sharded.pth.json").read_bytes()
    output.unlink()
    (tmp_path / "sharded.pth.json").unlink()
    code, _, _ = run_main(args_for(ws, output, "--merge-only"), capsys)
    assert code == 0 and output.read_bytes() == data
    assert (tmp_path / "sharded.pth.json").read_bytes() == sidecar_bytes


def test_unreadable_images_get_zero_rows_and_are_recorded(ws, tmp_path, capsys):
    data_dir = tmp_path / "data"
    entries = write_r1m(data_dir, 12, seed=1)
    jpg = data_dir / "jpg"
    truncated = jpg / entries[3]
    truncated.write_bytes(truncated.read_bytes()[:-200])
    (jpg / entries[6]).write_bytes(b"")
    (jpg / entries[8]).unlink()
    (jpg / entries[10]).write_text("not an image, just text\n")
    bad = {3: "truncated JPEG", 6: "empty", 8: "does not exist", 10: "could not decode"}
    output = tmp_path / "f.pth"
    argv = ["--weight", str(ws["weights"]), "--depth", "50", "--data-dir", str(data_dir), "--output", str(output),
            "--shard-size", "6", "--num-workers", "1", "--batch-size", "4", "--device", "cpu", "TEST.SCALE_LIST", "1"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "4 failed images" in out
    sidecar = json.loads((tmp_path / "f.pth.json").read_text())
    assert [f["index"] for f in sidecar["failed"]] == sorted(bad)
    for failure in sidecar["failed"]:
        assert failure["path"] == entries[failure["index"]]
        assert bad[failure["index"]] in failure["reason"], failure
        assert f"warning: image {failure['index']} {failure['path']}: {failure['reason']}" in err
    features = torch.load(output, weights_only=True).numpy()
    assert features.shape == (12, 2048) and features.dtype == np.float32
    assert not features[sorted(bad)].any()

    good = [i for i in range(12) if i not in bad]
    cfg = load_cfg_from_args(["MODEL.DEPTH", "50", "TEST.SCALE_LIST", "1"])
    descriptor = build_descriptor(cfg)
    descriptor.backbone.load_state_dict(ws["model"].state_dict())
    paths = [resolve_entry(str(data_dir), entries[i]) for i in good]
    direct = extract_features(descriptor, RevisitopImages(paths), "cpu", batch_size=4, num_workers=0)
    np.testing.assert_allclose(features[good], direct, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(features[good], axis=1), 1, atol=1e-5)


def test_resume_with_other_settings_is_refused(ws, tmp_path, capsys):
    output = tmp_path / "f.pth"
    parts = tmp_path / "f.pth.parts"
    code, out, _ = run_main(args_for(ws, output, "--num-shards", "2", "--shard-id", "0"), capsys)
    assert code == 0 and "still being extracted" in out
    before = sorted(p.name for p in parts.iterdir())
    for extra, weights, named in [(["SupG.rgem", "False"], None, "rgem: False vs True"),
                                  ([], ws["other"], "weights_sha256"),
                                  (["--shard-size", "8"], None, "--shard-size: 8 vs 4")]:
        code, _, err = run_main(args_for(ws, output, "--num-shards", "2", "--shard-id", "1", *extra,
                                         weights=weights), capsys)
        assert code == 2 and named in err and f"delete {parts}" in err, err
        assert err.count("\n") == 1
        assert sorted(p.name for p in parts.iterdir()) == before


def test_wrong_depth_stops_before_any_work(ws, tmp_path, capsys):
    output = tmp_path / "out" / "f.pth"
    argv = args_for(ws, output)
    argv[argv.index("--depth") + 1] = "101"
    code, out, err = run_main(argv, capsys)
    assert code == 2 and "ResNet-50" in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, message", [
    ("no-root", "data directory not found"),
    ("no-list", "image list not found"),
    ("empty-list", "is empty"),
    ("bad-key", "unknown config key 'SupG.gemq'"),
    ("bad-option", "unknown option --shards"),
    ("bad-weights", "w.pyth"),
    ("no-images", "none of the first"),
    ("bad-shard", "--shard-id"),
])
def test_user_errors_are_one_line_exit_2(ws, tmp_path, capsys, case, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "revisitop1m.txt").write_text("a.jpg\n")
    argv = args_for(ws, tmp_path / "f.pth")
    at = argv.index("--data-dir") + 1
    if case == "no-root":
        argv[at] = str(tmp_path / "missing")
    elif case == "no-list":
        (data / "revisitop1m.txt").unlink()
        argv[at] = str(data)
    elif case == "empty-list":
        (data / "revisitop1m.txt").write_text("\n\n")
        argv[at] = str(data)
    elif case == "bad-key":
        argv += ["SupG.gemq", "3"]
    elif case == "bad-option":
        argv += ["--shards", "3"]
    elif case == "bad-weights":
        (tmp_path / "w.pyth").write_bytes(b"garbage")
        argv[argv.index("--weight") + 1] = str(tmp_path / "w.pyth")
    elif case == "no-images":
        argv[at] = str(data)
    elif case == "bad-shard":
        argv += ["--num-shards", "2", "--shard-id", "2"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "f.pth.parts").exists()


def test_parts_and_shards_cover_the_list_once():
    assert part_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for shards in (1, 2, 3, 7):
        taken = sorted(p for i in range(shards) for p in parts_of_shard(5, shards, i))
        assert taken == list(range(5))


def test_jpeg_truncation_check(tmp_path):
    ok, encoded = cv2.imencode(".jpg", textured_image(40, 30, np.random.default_rng(0), 1))
    data = encoded.tobytes()
    full = tmp_path / "full.jpg"
    full.write_bytes(data)
    (tmp_path / "trailing.jpg").write_bytes(data + b"\x00" * 50)
    (tmp_path / "cut.jpg").write_bytes(data[:-100])
    (tmp_path / "png.jpg").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert not jpeg_truncated(full) and not jpeg_truncated(tmp_path / "trailing.jpg")
    assert jpeg_truncated(tmp_path / "cut.jpg") and not jpeg_truncated(tmp_path / "png.jpg")


def test_parts_of_other_settings_are_refused_naming_the_keys(ws, tmp_path, capsys):
    """Provenance: every part records the fingerprint it was made with. Parts of one setting are
    refused for another at merge, and also when run.json was deleted (a half-done start-over) or a
    part was copied in from another run's directory."""
    output = tmp_path / "f.pth"
    parts = tmp_path / "f.pth.parts"
    code, _, err = run_main(args_for(ws, output, "--num-shards", "2", "--shard-id", "0"), capsys)
    assert code == 0, err
    record = json.loads((parts / "part-000000.json").read_text())
    cfg = load_cfg_from_args(["MODEL.DEPTH", "50", "TEST.SCALE_LIST", "1"])
    assert record["fingerprint"] == descriptor_fingerprint(cfg, ws["weights"])
    run_json = (parts / "run.json").read_bytes()
    before = {p.name: p.read_bytes() for p in parts.iterdir() if p.name != "run.json"}

    def refused(*extra, named):
        code, out, err = run_main(args_for(ws, output, *extra), capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and named in err, err
        assert {p.name: p.read_bytes() for p in parts.iterdir() if p.name != "run.json"} == before
        assert not output.exists()
        return err

    refused("--merge-only", "SupG.gemp_p", "3.0", named="gemp_p: 3.0 vs 4.6")
    (parts / "run.json").unlink()  # run.json gone: the parts still say what they were made with
    err = refused("SupG.gemp_p", "3.0", "SupG.relup", "False", named="gemp_p: 3.0 vs 4.6")
    assert "relup: False vs True" in err and "part 0 in" in err and "part-000000.json" in err
    assert not (parts / "run.json").exists()  # refused before claiming the directory

    # a part of another run copied into a directory of this setting
    other = tmp_path / "other.pth"
    code, _, err = run_main(args_for(ws, other, "--num-shards", "4", "--shard-id", "1", "SupG.rgem_p", "3.5"), capsys)
    assert code == 0, err
    (parts / "run.json").write_bytes(run_json)
    for name in ("part-000001.npy", "part-000001.json"):
        (parts / name).write_bytes((tmp_path / "other.pth.parts" / name).read_bytes())
    before = {p.name: p.read_bytes() for p in parts.iterdir() if p.name != "run.json"}
    err = refused("--merge-only", named="rgem_p: 2.5 vs 3.5")
    assert "part 1 in" in err


def test_output_damaged_with_its_size_kept_is_not_complete(ws, reference, tmp_path, capsys):
    """'already complete' compares the sha256 recorded in the sidecar, not the size."""
    data, sidecar, ref_output = reference
    output = tmp_path / "feats.pth"
    shutil.copytree(ref_output.parent / "feats.pth.parts", tmp_path / "feats.pth.parts")
    shutil.copy(ref_output.parent / "feats.pth.json", tmp_path / "feats.pth.json")
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte inside the tensor data: same size
    output.write_bytes(bytes(damaged))
    code, out, err = run_main(args_for(ws, output), capsys)
    assert code == 0, err
    assert "already complete" not in out and "wrote" in out
    assert output.read_bytes() == data  # merged again from the parts

    shutil.rmtree(tmp_path / "feats.pth.parts")  # without parts there is nothing to rebuild it from
    output.write_bytes(bytes(damaged))
    code, out, err = run_main(args_for(ws, output), capsys)
    assert code == 2 and err.count("\n") == 1 and "already complete" not in out, err
    assert f"{output} exists but its sha256 is not the one recorded in feats.pth.json" in err
    assert output.read_bytes() == bytes(damaged) and not (tmp_path / "feats.pth.parts").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:128", "cuda:00", "", "CPU", "cuda:-1", "meta"])
def test_unknown_device_is_one_line_naming_the_flag(ws, tmp_path, capsys, device):
    argv = args_for(ws, tmp_path / "f.pth")
    argv[argv.index("--device") + 1] = device
    if device == "tpu":  # one case as a user runs it
        code, _, err = finish(spawn(argv))
    else:
        code, _, err = run_main(argv, capsys)
    assert code == 2 and err.startswith(f"error: bad value {device!r} for --device: expected auto, cpu, cuda")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
