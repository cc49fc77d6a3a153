"""Faults: a full disk or a read-only output directory, for test.py and extract_rop1m.py.

Disks are small tmpfs mounts (`mount -t tmpfs -o size=...`), read-only ones tmpfs mounted `ro`:
the suite runs as root, and chmod does not stop root. Without permission to mount, the tests skip.
Expected: a clear one-line error naming the file (exit 2), or, for the feature cache (which only
saves time), a warning and a normal result; never a partial file under a final name.
"""

import contextlib
import subprocess
import uuid

import pytest

import extract_rop1m
from test.data.synthetic import write_r1m
from tests.entry_points import base_args, error_line, make_workspace


def _mount(folder, options):
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root in a "
                    "container allowed to mount")


@contextlib.contextmanager
def tmpfs(folder, size="64k", read_only=False, fill=False):
    """A tmpfs at `folder`; `fill`: a filler file takes every free byte; `read_only`: mounted ro."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount(folder, f"size={size}")
    try:
        if fill:
            with open(folder / "filler", "wb", buffering=0) as handle:
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * 4096)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def remount(folder, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_disk_ws")
    make_workspace(root, tmp_path_factory, n_db=8, n_query=2)
    return root


def files(folder):
    """Files a run left, but the filler and the run lock."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name not in ("filler", ".lock"))


def test_read_only_out_dir_stops_before_any_work(ws, tmp_path, entry):
    with tmpfs(tmp_path / "ro", read_only=True) as out:
        done = entry("test.py", *base_args(ws, out=out), cwd=tmp_path, subprocess=True)
        error_line(done, f"cannot write to {out} (OUT_DIR)", "Read-only file system")
        assert files(out) == []


def test_out_dir_too_small_for_saved_features(ws, tmp_path, entry):
    """The log fits, the npz does not: exit 2 naming the npz; no npz and no temporary file remain.
    The log already holds this run's result line (it was computed); only the features are missing."""
    with tmpfs(tmp_path / "small", size="64k") as out:
        done = entry("test.py", *base_args(ws, out=out), "TEST.SAVE_FEATURES", "True",
                     "TEST.CACHE_DIR", tmp_path / "cache", cwd=tmp_path)
        error_line(done, f"cannot write {out / 'roxford5k.npz'}", "No space left on device", preflight=False)
        assert files(out) == ["config.yaml", "log.txt"]  # results.json takes only finished datasets
        assert "Retrieval results: mAP" in (out / "log.txt").read_text()


@pytest.mark.parametrize("problem", ["read_only", "full"])
def test_unwritable_feature_cache_only_warns(ws, tmp_path, entry, problem):
    with tmpfs(tmp_path / "cache", read_only=problem == "read_only", fill=problem == "full") as cache:
        out = tmp_path / "out"
        done = entry("test.py", *base_args(ws, out=out), "TEST.CACHE_DIR", cache, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("warning: feature cache not written") == 2
        assert "Retrieval results: mAP" in (out / "log.txt").read_text()
        assert files(cache) == []  # no entry, no note, no temporary file


def test_full_out_dir_is_a_clear_error(ws, tmp_path, entry):
    with tmpfs(tmp_path / "full", fill=True) as out:
        done = entry("test.py", *base_args(ws, out=out), cwd=tmp_path, subprocess=True)
        error_line(done, f"cannot write {out / 'log.txt'}", "No space left on device")


# --------------------------------------------------------------------------- extract_rop1m.py

@pytest.fixture(scope="module")
def r1m(ws, tmp_path_factory):
    """8 distractor images and an uninterrupted extraction of them (the bytes a resume must give)."""
    root = tmp_path_factory.mktemp("faults_disk_r1m")
    write_r1m(root / "data", 8)
    reference = root / "reference" / "f.pth"
    assert extract_rop1m.main(r1m_args(ws, root / "data", reference)) == 0
    return root / "data", reference.read_bytes()


def r1m_args(ws, data, output):
    return ["--weight", str(ws / "weights"), "--depth", "50", "--data-dir", str(data), "--output", str(output),
            "--shard-size", "4", "--num-workers", "0", "--batch-size", "4", "--device", "cpu",
            "TEST.SCALE_LIST", "1"]


def test_extract_rop1m_read_only_output(ws, r1m, tmp_path, entry):
    data, _ = r1m
    with tmpfs(tmp_path / "ro", read_only=True) as folder:
        done = entry("extract_rop1m.py", *r1m_args(ws, data, folder / "f.pth"), cwd=tmp_path)
        error_line(done, f"cannot create {folder / 'f.pth.parts'}", "Read-only file system")


def test_extract_rop1m_disk_full_at_merge_then_resume(ws, r1m, tmp_path, entry):
    """The parts fit, the merged file does not: exit 2 naming it, no output or temporary file;
    with room again the same command finishes with the bytes of an uninterrupted run."""
    data, reference = r1m
    with tmpfs(tmp_path / uuid.uuid4().hex[:8], size="100k") as folder:
        output = folder / "f.pth"
        done = entry("extract_rop1m.py", *r1m_args(ws, data, output), cwd=tmp_path)
        error_line(done, f"cannot write {output}", "No space left on device", preflight=False)
        assert not output.exists() and not (folder / "f.pth.json").exists()
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file
        remount(folder, "size=1m")
        done = entry("extract_rop1m.py", *r1m_args(ws, data, output), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "2 already done, 0 to do" in done.stdout
        assert output.read_bytes() == reference


@pytest.mark.parametrize("which, named", [("list", "the image list in --data-dir"),
                                          ("image", "the images in --data-dir"),
                                          ("weights", "--weight")])
def test_extract_rop1m_output_that_is_an_input_is_refused_unharmed(ws, r1m, tmp_path, entry, which, named):
    """--output naming the image list, an image or the weights stops before any work, saying it is
    an input (not: 'delete it'), and the file keeps its bytes."""
    data, _ = r1m
    target = {"list": data / "revisitop1m.txt", "image": next((data / "jpg").rglob("*.jpg")),
              "weights": ws / "weights" / "CVPR2022_CVNet_R50.pyth"}[which]
    before = target.read_bytes()
    done = entry("extract_rop1m.py", *r1m_args(ws, data, target), cwd=tmp_path)
    error_line(done, "refusing to write", named)
    assert "delete it" not in done.stderr and target.read_bytes() == before
    assert not target.with_name(target.name + ".parts").exists()
