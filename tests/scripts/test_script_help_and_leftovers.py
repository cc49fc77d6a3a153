"""What the scripts say and leave behind: the --help examples of sweep.py and rerank_features.py
parse; extract_rop1m.py --help lists exactly the config keys a run reads; a test.py run leaves no
.lock; the run outputs in the checkout are ignored by git."""

import os
import shlex
import subprocess
import sys

import pytest
from yacs.config import CfgNode

from config import _flat_keys, get_cfg_defaults
from errors import UserError
from test.data.synthetic import write_r1m
from tests.entry_points import ROOT, entry_module, error_line, roxford_workspace, shared_weights


def examples(epilog, script):
    """The command lines of an epilog's examples (continuation lines joined), as argv lists."""
    joined = epilog.replace("\\\n", " ")
    return [shlex.split(line)[2:] for line in joined.splitlines() if line.strip().startswith(f"python {script} ")]


@pytest.mark.parametrize("script", ["sweep.py", "rerank_features.py"])
def test_help_examples_parse(script):
    module = entry_module(script)
    commands = examples(module.EXAMPLES, script)
    assert len(commands) >= 5
    for argv in commands:
        args = module.parse_args(argv)  # raises UserError on any option it does not know
        assert args.features or (args.query and args.db)


@pytest.mark.parametrize("script", ["sweep.py", "rerank_features.py"])
def test_help_prints_the_examples_as_written(script, capsys):
    module = entry_module(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    out = capsys.readouterr().out
    assert module.EXAMPLES in out


def test_extract_rop1m_help_lists_exactly_the_keys_a_run_reads(tmp_path_factory, monkeypatch, capsys):
    """Every config value read while a real (tiny) extraction runs is recorded; --help lists exactly
    those keys."""
    extract_rop1m = entry_module("extract_rop1m.py")
    root = tmp_path_factory.mktemp("rop1m_keys")
    write_r1m(root / "r1m", 2)
    read = []
    real_getattr, real_getitem = CfgNode.__getattr__, CfgNode.__getitem__

    def record(node, name):
        read.append((id(node), name))

    monkeypatch.setattr(CfgNode, "__getattr__", lambda node, name: (record(node, name), real_getattr(node, name))[1])
    monkeypatch.setattr(CfgNode, "__getitem__", lambda node, name: (record(node, name), real_getitem(node, name))[1])
    made = []
    real_make_cfg = extract_rop1m.make_cfg
    monkeypatch.setattr(extract_rop1m, "make_cfg", lambda *a: made.append(real_make_cfg(*a)) or made[-1])
    argv = ["--weight", str(shared_weights(tmp_path_factory)), "--depth", "50", "--data-dir", str(root / "r1m"),
            "--output", str(root / "feats.pth"), "--num-workers", "0", "--device", "cpu", "TEST.SCALE_LIST", "1"]
    assert extract_rop1m.main(argv) == 0, capsys.readouterr().err
    monkeypatch.undo()
    sections = {id(made[0]): ""}
    for key in _flat_keys(made[0]):
        parts = key.split(".")
        node = made[0]
        for depth, name in enumerate(parts[:-1]):
            node = node[name]
            sections[id(node)] = ".".join(parts[:depth + 1]) + "."
    flat = set(_flat_keys(get_cfg_defaults()))
    used = {sections[node] + name for node, name in read if node in sections} & flat
    assert used and set(extract_rop1m.READ_KEYS) == used
    capsys.readouterr()
    assert extract_rop1m.main(["--help"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.split("config keys it reads")[1].splitlines()
              if line.startswith("  ")}
    assert listed == used


def test_no_default_r1m_file_for_a_backbone_extract_rop1m_does_not_extract():
    from test.build import default_r1m_path

    cfg = get_cfg_defaults()
    assert default_r1m_path(cfg) == "./feats_1m_RN50.pth"
    cfg.MODEL.TYPE = "EFFICIENTNET_LITE0"
    with pytest.raises(UserError, match="SupG.distractors_path"):
        default_r1m_path(cfg)
    help_text = entry_module("extract_rop1m.py").build_parser().format_help()
    assert "LITE0" not in help_text.split("config keys it reads")[0]


def test_a_failed_run_leaves_no_lock(tmp_path_factory, tmp_path, entry):
    """A run that stops on a user error after taking the OUT_DIR lock, and a run that succeeds:
    neither leaves <OUT_DIR>/.lock."""
    root, _ = roxford_workspace(tmp_path_factory, "leftover_lock", n_db=3, n_query=1)
    out = tmp_path / "out"
    args = ["TEST.WEIGHTS", root / "weights", "TEST.DATA_DIR", root / "revisitop", "OUT_DIR", out,
            "TEST.DATASET_LIST", "roxford5k", "DEVICE", "cpu", "SupG.onemeval", "SupG.distractors_path",
            tmp_path / "absent.npy"]
    error_line(entry("test.py", *args, cwd=tmp_path), "absent.npy", preflight=False)
    assert (out / "log.txt").is_file() and not (out / ".lock").exists()


HOLDER = """
import sys
from test.outputs.writer import OutDirLock
with OutDirLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_busy_lock_refuses_and_its_holder_removes_it(tmp_path):
    """Another process holds the lock: taking it fails at once; once that process is done the file
    is gone and the lock can be taken (and is gone again after)."""
    from test.outputs.writer import OutDirLock

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another run is using"):
            OutDirLock(tmp_path).__enter__()
        assert (tmp_path / ".lock").is_file()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not (tmp_path / ".lock").exists()
    with OutDirLock(tmp_path):
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_file_removed_under_a_waiting_run_is_not_trusted(tmp_path, monkeypatch):
    """A run opened .lock just before its holder removed it: the lock it then gets is on a file no
    longer in the folder, so it takes the new file instead (two runs never both hold 'the' lock)."""
    import test.outputs.writer as writer

    (tmp_path / ".lock").write_text("")
    stale = open(tmp_path / ".lock", "a+")
    (tmp_path / ".lock").unlink()  # the holder's exit
    opened = []

    real_open = writer._open_lock_file

    def first_stale(path):
        opened.append(path)
        return stale if len(opened) == 1 else real_open(path)
    monkeypatch.setattr(writer, "_open_lock_file", first_stale)
    with writer.OutDirLock(tmp_path) as lock:
        assert len(opened) == 2 and stale.closed
        assert os.fstat(lock.handle.fileno()).st_ino == os.stat(tmp_path / ".lock").st_ino
    assert not (tmp_path / ".lock").exists()


def test_run_outputs_in_the_checkout_are_ignored(tmp_path):
    names = ["log.txt", "config.yaml", "results.json", "per_query_roxford5k.csv", ".lock", "roxford5k.npz",
             ".venv/bin/python", "results.json.damaged-20260101-000000-abcdef"]
    done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *names], capture_output=True,
                          text=True)
    if done.returncode not in (0, 1):
        pytest.skip(f"git check-ignore unavailable: {done.stderr.strip()}")
    assert sorted(done.stdout.split()) == sorted(names)
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", *names], capture_output=True, text=True)
    assert tracked.stdout == ""
