"""The one output writer: every file a run writes goes through here.

- Atomic: the bytes go to a temporary file with a unique name in the target folder
  (``.<name>.tmp.<host>.<pid>.<random>``), are fsynced, then renamed over the target; a reader sees
  the old file or the new one, never half of one. On any failure or Ctrl-C the temporary file is
  removed. Temporary files that a killed process left behind are recognised by host and pid
  (``remove_stale_temps``).
- Never over an input: files a run reads are registered (``register_input``); writing over one of
  them, or into a registered input folder (a dataset's image folder), stops with one line.
- One run per output folder: ``OutDirLock`` holds an exclusive lock on ``<OUT_DIR>/.lock`` for the
  whole run, so two runs cannot mix their files or their log lines; the file goes when the run ends.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
from pathlib import Path

import numpy as np

from errors import UserError, special_kind

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+$")

_input_files: dict[tuple[int, int], str] = {}   # (st_dev, st_ino) -> what it is
_input_folders: dict[Path, str] = {}


def register_input(path, what: str) -> None:
    """Remember that this run reads `path` (a file, or a folder of inputs such as images)."""
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
    except OSError:
        return  # not there (yet): the loader reports it
    if resolved.is_dir():
        _input_folders[resolved] = what
    else:
        _input_files[(stat.st_dev, stat.st_ino)] = what


def forget_inputs() -> None:
    """Clear the registry (a new run in the same process)."""
    _input_files.clear()
    _input_folders.clear()


def input_named(path) -> str | None:
    """What `path` is as an input of this run (e.g. "TEST.WEIGHTS"), or None."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return _input_files.get((stat.st_dev, stat.st_ino))


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def refuse_input(path) -> None:
    """UserError when `path`, or where it points (a symbolic link is followed to its final target),
    is or would land inside an input of this run, is a special file (a FIFO, a device, a socket, a
    directory), or has a name longer than the file system allows. Called before any work for every
    output, and again by every write."""
    path = Path(path)
    target = path.resolve()
    shown = path if target == path.absolute() else f"{path} (a link to {target})"
    what = input_named(path)
    if what is not None:
        raise UserError(f"refusing to write {shown}: it is an input of this run ({what}); choose another "
                        "output name")
    for parent in {path.parent.resolve(), target.parent}:
        for folder, what in _input_folders.items():
            if parent == folder or folder in parent.parents:
                raise UserError(f"refusing to write {shown}: it lies inside {folder}, an input folder of this run "
                                f"({what}); choose an output folder outside it")
    kind = special_kind(path)
    if kind is not None:
        raise UserError(f"cannot write {shown}: it is {kind}; remove or rename it, or choose another output name")
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise UserError(f"cannot write {str(path)[:80]}...: its name is {len(os.fsencode(path.name))} bytes, more "
                        f"than the {NAME_MAX} a file name may have; choose a shorter output name")


def refuse_output_folder(folder, flag: str) -> None:
    """UserError when the output folder `folder` (named `flag` on the command line) lies inside an
    input folder: what a run writes there (pictures) would become inputs of the next run."""
    resolved = Path(folder).resolve()
    for inputs, what in _input_folders.items():
        if resolved == inputs or inputs in resolved.parents:
            raise UserError(f"{flag} {folder} lies inside {inputs} ({what}): what this run writes there would "
                            f"become inputs of the next run; choose a {flag} outside it")


def _fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a temporary file if it is there (on a read-only file system even a missing file's
    unlink fails: nothing to clean up then)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _temp_stem(name: str) -> str:
    """`name` as it appears in its temporary files: shortened (with a hash of the whole name, so two
    long names never share one) when the temporary name would pass NAME_MAX."""
    if len(os.fsencode(name)) <= NAME_MAX - 80:  # ".", ".tmp.", host (40), pid, random: under 80
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return os.fsdecode(os.fsencode(name)[:100]).rstrip("\udcff") + "~" + digest


def temp_name(path: Path) -> Path:
    return path.with_name(f".{_temp_stem(path.name)}.tmp.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}")


def atomic_write(path, data, what: str = "") -> Path:
    """Write `data` (bytes, str, or a function writing to a binary handle) to `path` atomically."""
    path = Path(path)
    refuse_input(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path.parent}{what}: {error.strerror or error}") from None
    remove_stale_temps(path.parent, path.name)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise UserError(f"cannot write {path}{what}: {error.strerror or error}") from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def save_npy(path, array, what: str = "") -> Path:
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), what)


def save_npz(path, what: str = "", **arrays) -> Path:
    return atomic_write(path, lambda handle: np.savez(handle, **arrays), what)


def json_bytes(value) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def save_json(path, value, what: str = "") -> Path:
    return atomic_write(path, json_bytes(value), what)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, name=None) -> None:
    """Delete temporary files that a killed process of this host left in `folder` (for final
    file `name`, or any). Temporary files of live processes and of other hosts are left alone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for entry in names:
        match = _TEMP.match(entry)
        if not match or (name is not None and match["name"] != _temp_stem(name)):
            continue
        if match["host"] == _HOST and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


class OutDirLock:
    """Exclusive lock on `<folder>/.lock` for a whole run; a second run on the folder stops at once.

    The lock file is removed when the run ends (success, error or Ctrl-C), so a run leaves no
    `.lock` behind. It is unlinked while still locked; a run that opened the old file and locks it
    after that sees that the path no longer names its file and opens the new one."""

    ATTEMPTS = 5  # each retry follows a holder that removed the file at the same moment

    def __init__(self, folder, flag: str = "OUT_DIR"):
        self.folder, self.flag, self.handle = Path(folder), flag, None

    def __enter__(self):
        path = self.folder / ".lock"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write to {self.folder} ({self.flag}): {error.strerror or error}") from None
        for _ in range(self.ATTEMPTS):
            handle = self._locked(path)
            if _same_file(handle, path):
                self.handle = handle
                return self
            handle.close()  # locked a file that its holder removed on the way out: take the new one
        raise UserError(f"cannot lock {self.folder} ({self.flag}): its .lock keeps being replaced; "
                        "wait for the other runs to finish")

    def _locked(self, path):
        """`path` opened (never through a link or a special file) and locked; UserError when another
        run holds it."""
        if os.path.islink(path) or special_kind(path) is not None:
            raise UserError(f"cannot lock {self.folder} ({self.flag}): its run lock {path} is "
                            f"{'a symbolic link' if os.path.islink(path) else special_kind(path)}, not a file; "
                            "remove it (a run recreates it)")
        try:
            handle = _open_lock_file(path)
        except OSError as error:
            raise UserError(f"cannot write to {self.folder} ({self.flag}): {error.strerror or error} (opening its "
                            f"run lock {path})") from None
        try:
            # POSIX record locks belong to this process alone: DataLoader workers forked from it do
            # not inherit them, so a killed run never leaves its folder locked by an orphan.
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"another run is using {self.folder} ({self.flag}); wait for it to finish "
                                f"or give this run another {self.flag}") from None
            raise UserError(f"cannot lock {self.folder} ({self.flag}): {error.strerror or error}") from None
        return handle

    def __exit__(self, *exc):
        if self.handle is not None:
            _remove(self.folder / ".lock")  # still locked: no other run holds this file
            fcntl.lockf(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
        return False


def _open_lock_file(path):
    """The run lock opened for appending, never through a link (O_NOFOLLOW) nor blocking on a FIFO."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644), "a+")


def _same_file(handle, path) -> bool:
    """`path` still names the open file `handle` (it was not removed or replaced meanwhile)."""
    try:
        on_disk, opened = os.stat(path), os.fstat(handle.fileno())
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)
