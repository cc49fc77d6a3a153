"""A run explains itself: log.txt's header and full config, <OUT_DIR>/config.yaml and results.json,
checked for their contents against values computed here (git, versions, sha256, the config, the
log's own mAP lines), through test.py as a user runs it."""

import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from config import get_cfg_defaults, load_cfg_from_args
from test.build import descriptor_fingerprint
from test.data.synthetic import write_checkpoint, write_revisitop

ROOT = Path(__file__).resolve().parents[2]
RESULTS = re.compile(r"^Retrieval results: mAP E: (\d+\.\d\d), M: (\d+\.\d\d), H: (\d+\.\d\d)$")
MPK = re.compile(r"^Retrieval results: mP@k\[1, 5, 10\] E: \[[\d., ]+\], M: \[[\d., ]+\], H: \[[\d., ]+\]$")
DATASETS = ("roxford5k", "rparis6k")
STEPS = ["extraction", "search", "rerank", "evaluate"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    write_checkpoint(root / "weights" / "CVPR2022_CVNet_R50.pyth", depth=50, seed=3)
    for i, name in enumerate(DATASETS):
        write_revisitop(root / "revisitop", name, n_db=6, n_query=2, seed=i, divisor=32)
    return root


def args_for(root, out, *extra):
    return ["TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
            "TEST.DATASET_LIST", ",".join(DATASETS), "OUT_DIR", str(out), "TEST.SCALE_LIST", "1",
            "TEST.NUM_WORKERS", "0", "DEVICE", "cpu", "SupG.M", "4", "SupG.K", "1", *extra]


@pytest.fixture(scope="module")
def two_runs(workspace, tmp_path_factory):
    """Two runs on one OUT_DIR, the second with another beta: (out, [argv of each run])."""
    from tests.entry_points import entry_module

    out = tmp_path_factory.mktemp("provenance_out")
    argvs = [args_for(workspace, out), args_for(workspace, out, "SupG.beta", "0.3")]
    for argv in argvs:
        assert entry_module("test.py").main(argv) == 0
    return out, argvs


def git_head():
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def run_blocks(log_text):
    """log.txt split into runs (each starts with a `==== ` line)."""
    blocks = re.split(r"(?m)^(?===== )", log_text)
    return [block.splitlines() for block in blocks if block.strip()]


def test_log_header_names_code_versions_device_and_weights(workspace, two_runs):
    out, argvs = two_runs
    runs = run_blocks((out / "log.txt").read_text())
    assert len(runs) == 2
    weights = workspace / "weights" / "CVPR2022_CVNet_R50.pyth"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    run_ids = []
    for lines, argv in zip(runs, argvs):
        assert re.fullmatch(r"==== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d python test\.py " + re.escape(" ".join(argv)),
                            lines[0])
        run_line = next(line for line in lines if line.startswith("run "))
        found = re.fullmatch(r"run (\d{8}-\d{6}-[0-9a-f]{6}): code (\S+) \((clean|dirty)\); python=(\S+) "
                             r"torch=(\S+) numpy=(\S+) opencv=(\S+)", run_line)
        assert found, run_line
        run_ids.append(found.group(1))
        if git_head():
            assert found.group(2) == git_head()
        assert found.groups()[3:] == (platform.python_version(), torch.__version__, np.__version__, cv2.__version__)
        device_line = next(line for line in lines if line.startswith("device "))
        assert device_line.startswith("device cpu (") and device_line.endswith(f"weights {weights} sha256 {digest}")
    assert run_ids[0] != run_ids[1]


def full_config(lines):
    """The YAML under `full config:` (indented by two spaces), parsed."""
    start = lines.index("full config:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return yaml.safe_load("\n".join(line[2:] for line in lines[start:end]))


def flat_keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_log_holds_every_config_key_and_config_yaml_reloads_the_last_run(two_runs):
    out, argvs = two_runs
    runs = run_blocks((out / "log.txt").read_text())
    expected = [yaml.safe_load(load_cfg_from_args(argv).dump()) for argv in argvs]
    for lines, cfg in zip(runs, expected):
        logged = full_config(lines)
        assert logged == cfg
        assert flat_keys(logged) == flat_keys(yaml.safe_load(get_cfg_defaults().dump()))
    assert [full_config(lines)["SupG"]["beta"] for lines in runs] == [0.15, 0.3]
    reloaded = load_cfg_from_args(["--cfg", str(out / "config.yaml")])
    assert yaml.safe_load(reloaded.dump()) == expected[1]


def test_results_lines_keep_the_official_format_and_time_is_split_per_step(two_runs):
    out, _ = two_runs
    for lines in run_blocks((out / "log.txt").read_text()):
        for name in DATASETS:
            at = lines.index(f">> {name}: Global Retrieval for scale [1.0] with SuperGlobal")
            assert RESULTS.match(lines[at + 1]) and MPK.match(lines[at + 2]), lines[at:at + 3]
            timing = re.fullmatch(rf"time for {name}: (.*) \(total (\d+\.\d\d) s\)", lines[at + 3])
            assert timing, lines[at + 3]
            steps = [part.rsplit(" ", 2) for part in timing.group(1).split(", ")]
            assert [step for step, _, unit in steps] == STEPS and all(unit == "s" for _, _, unit in steps)
            total = sum(float(seconds) for _, seconds, _ in steps)
            assert abs(total - float(timing.group(2))) <= 0.02


def test_results_json_has_one_record_per_run_and_dataset_matching_the_log(workspace, two_runs):
    out, argvs = two_runs
    records = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in records] == list(DATASETS) * 2
    runs = run_blocks((out / "log.txt").read_text())
    weights = workspace / "weights" / "CVPR2022_CVNet_R50.pyth"
    for index, record in enumerate(records):
        lines, argv = runs[index // 2], argvs[index // 2]
        cfg = load_cfg_from_args(argv)
        assert f"run {record['run_id']}: code " in "\n".join(lines)
        assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert record["fingerprint"] == json.loads(json.dumps(descriptor_fingerprint(cfg, weights)))
        assert record["config"]["SupG"]["beta"] == cfg.SupG.beta and record["config"]["SupG"]["M"] == 4
        logged = RESULTS.match(lines[lines.index(f">> {record['dataset']}: Global Retrieval for scale [1.0] "
                                                 "with SuperGlobal") + 1]).groups()
        assert [f"{record['results'][p]['map'] * 100:.2f}" for p in "EMH"] == list(logged)
        assert all(set(record["results"][p]["mp@k"]) == {"1", "5", "10"} for p in "EMH")
        assert sorted(record["seconds"]) == sorted(STEPS) and all(v >= 0 for v in record["seconds"].values())
    assert records[0]["run_id"] == records[1]["run_id"] != records[2]["run_id"] == records[3]["run_id"]
