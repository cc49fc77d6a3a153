"""Running the entry points from tests, and the workspaces they run on (used by tests/faults/ and
the end-to-end tests).

The entry points run as a user runs them: `python test.py ...` / `python extract_rop1m.py ...` in a
subprocess, or, to keep the suite fast on two cores (a subprocess pays ~2 s of interpreter and torch
start-up per case), their `main(argv)` in this process with file descriptors 1 and 2 captured
(`entry(..., subprocess=False)`, the default for most cases). Each module keeps some cases as real
subprocesses; `FAULTS_SUBPROCESS=1 python -m pytest tests/faults/` runs every case as one.
`error_line` checks the contract of errors.py: exit code 2, one `error: ...` line naming the
culprit, no traceback. One random ResNet-50 checkpoint is written per pytest session (in the
session's base temp dir) and shared by every module.
"""

import importlib.util
import os
import shutil
import subprocess
import subprocess as _subprocess
import sys
from pathlib import Path

import pytest

from test.data.synthetic import write_checkpoint, write_revisitop

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_NAME = "CVPR2022_CVNet_R50.pyth"
# one scale, no worker processes, a small rerank: the cheapest run that still exercises every stage
FAST = ["TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0", "TEST.BATCH_SIZE", "4", "DEVICE", "cpu",
        "SupG.M", "4", "SupG.K", "1"]


def run_script(script, *args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_test_py(*args, cwd, timeout=300):
    return run_script("test.py", *args, cwd=cwd, timeout=timeout)


ALL_SUBPROCESS = os.environ.get("FAULTS_SUBPROCESS") == "1"
_MODULES = {}


def entry_module(script):
    """The entry-point script loaded as a module (test.py cannot be imported by name: test/ is a package)."""
    if script not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"_entry_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[script] = module
    return _MODULES[script]


@pytest.fixture
def entry(capfd):
    """entry(script, *args, cwd, subprocess=False) -> CompletedProcess(returncode, stdout, stderr)."""

    def call(script, *args, cwd, subprocess=False, timeout=300):
        if subprocess or ALL_SUBPROCESS:
            return run_script(script, *args, cwd=cwd, timeout=timeout)
        argv = [str(a) for a in args]
        capfd.readouterr()
        before = os.getcwd()
        os.chdir(cwd)
        try:
            code = entry_module(script).main(argv)
        finally:
            os.chdir(before)
        out, err = capfd.readouterr()
        return _subprocess.CompletedProcess([script, *argv], code, out, err)

    return call


def error_line(done, *fragments, preflight=True):
    """The `error: ...` line of a run that stopped on a UserError, after checking the contract.

    `preflight`: the run stopped before any extraction, so stderr is that one line and nothing
    else (later stops also have tqdm progress bars on stderr above the error line)."""
    assert done.returncode == 2, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").split("\n") if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    if preflight:
        assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    for fragment in fragments:
        assert str(fragment) in errors[0], (fragment, errors[0])
    return errors[0]


def shared_weights(tmp_path_factory):
    """<session tmp>/faults_weights/CVPR2022_CVNet_R50.pyth, written once per session."""
    folder = tmp_path_factory.getbasetemp() / "faults_weights"
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        folder.mkdir(exist_ok=True)
        tmp = folder / "writing.tmp"
        write_checkpoint(tmp, depth=50, seed=11)
        os.replace(tmp, path)
    return path


def make_workspace(root, tmp_path_factory, datasets=("roxford5k",), n_db=6, n_query=2):
    """<root>/weights (a copy-free symlink to the session checkpoint) and <root>/revisitop."""
    root = Path(root)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    link = root / "weights" / WEIGHTS_NAME
    if not link.exists():
        link.symlink_to(shared_weights(tmp_path_factory))
    gnds = {name: write_revisitop(root / "revisitop", name, n_db=n_db, n_query=n_query, divisor=32, seed=i)
            for i, name in enumerate(datasets)}
    return gnds


def roxford_workspace(tmp_path_factory, name, n_db=6, n_query=2):
    """A fresh module workspace with one `roxford5k` stand-in: (root, its gnd dict)."""
    root = tmp_path_factory.mktemp(name)
    return root, make_workspace(root, tmp_path_factory, n_db=n_db, n_query=n_query)["roxford5k"]


def base_args(root, dataset="roxford5k", out=None):
    root = Path(root)
    return ["TEST.WEIGHTS", root / "weights", "TEST.DATA_DIR", root / "revisitop",
            "TEST.DATASET_LIST", dataset, "OUT_DIR", out or root / "out", *FAST]


def stops_before_any_work(entry, root, dataset, tmp_path, *fragments, subprocess=False, extra=()):
    """test.py on TEST.DATASET_LIST `dataset` (plus the `extra` KEY VALUE pairs) stops with one
    `error:` line holding `fragments`, and writes nothing to its OUT_DIR, not even its run lock."""
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, dataset, out=out), *extra, cwd=tmp_path, subprocess=subprocess)
    error_line(done, *fragments)
    assert_nothing_written(out)
    assert not (out / ".lock").exists()


def out_files(out):
    """Every file under `out` but the run lock, relative, with log.txt reported by content."""
    out = Path(out)
    if not out.exists():
        return {}
    return {str(p.relative_to(out)): (p.read_text() if p.name == "log.txt" else p.stat().st_size)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_nothing_written(out):
    """A run that stopped before its header: no features, no cache entries, no config.yaml, and
    log.txt holds at most the one line saying the run failed (`==== <time> <command> -> error: ...`)."""
    files = out_files(out)
    log = files.pop("log.txt", "")
    assert files == {}, files
    lines = log.splitlines()
    assert len(lines) <= 1 and all(line.startswith("==== ") and " -> error: " in line for line in lines), log


def copy_tree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)
