"""R1M (revisitop1m) distractor features as a resumable, shardable job: the library behind
extract_rop1m.py. Its files on disk (run.json, parts, the output and its sidecar) are specified in
docs/r1m_extraction.md; every one is written atomically.

Parts are the unit of work and of batching: the list is cut into parts of S images whatever the
number of processes, and a part is always extracted by one extract_features call. Shard i of N
takes parts i, i+N, i+2N, ... So the features do not depend on N, on which process computed a part,
or on how often the job was interrupted, and the merged file is byte-identical to an uninterrupted
single-process run (same device type and batch size).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from errors import UserError, readable_file
from model.backbone import CVNET_INPUT
from model.fingerprint import file_sha256, fingerprint_differences
from test.data.images import read_chw
from test.extraction.extract import extract_features
from test.outputs.writer import atomic_write, json_bytes, remove_stale_temps
from test.r1m.features import sidecar_path

LIST_NAME = "revisitop1m.txt"
RUN_FORMAT = "superglobal-rop1m-run/1"
PART_FORMAT = "superglobal-rop1m-part/2"  # /2: each part records the descriptor fingerprint
SIDECAR_FORMAT = "superglobal-rop1m-features/1"
IMAGE_DIR = "jpg"
PROBE_ENTRIES = 100  # the job stops early when none of the list's first entries exists



# --------------------------------------------------------------------------------------------
# The image list
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageList:
    root: str
    entries: list
    sha256: str  # of the list file's bytes

    def __len__(self):
        return len(self.entries)


def read_image_list(root, list_name=LIST_NAME):
    """ROOT/revisitop1m.txt: one image path per line (blank lines skipped), relative to ROOT/jpg/
    or to ROOT; a leading UTF-8 byte-order mark is dropped (the sha256 stays that of the file's
    bytes). UserError for a missing ROOT or list, an unreadable or empty list."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"data directory not found: {root} (--data-dir): it must hold {list_name} and {IMAGE_DIR}/")
    list_path = readable_file(root_path / list_name, " (the image list in --data-dir)")
    if not list_path.is_file():
        raise UserError(f"image list not found: {list_path}: download {list_name} into --data-dir "
                        "(README: +1M distractors)")
    try:
        data = list_path.read_bytes()
        text = data.decode("utf-8-sig")  # a list saved with a BOM: not part of the first path
    except OSError as error:
        raise UserError(f"cannot read {list_path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{list_path} is not UTF-8 text (byte {error.start}); is it the image list?") from None
    entries = [line.strip() for line in text.splitlines()]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise UserError(f"image list {list_path} is empty: download {list_name} again")
    return ImageList(os.fspath(root_path), entries, hashlib.sha256(data).hexdigest())


def resolve_entry(root, entry):
    """ROOT/jpg/<entry> when that file exists, else ROOT/<entry> (decided per entry)."""
    under_images = os.path.join(root, IMAGE_DIR, entry)
    return under_images if os.path.exists(under_images) else os.path.join(root, entry)


def require_some_images(image_list, count=PROBE_ENTRIES):
    """Stop before any work when none of the first `count` entries exists (wrong --data-dir)."""
    head = image_list.entries[:count]
    if not any(os.path.exists(resolve_entry(image_list.root, entry)) for entry in head):
        raise UserError(f"none of the first {len(head)} images of the list exists under "
                        f"{os.path.join(image_list.root, IMAGE_DIR)}/ or {image_list.root}/ "
                        f"(first: {head[0]}): check --data-dir and that the image archives are unpacked")


def load_entry(root, entry):
    """One list entry as a uint8 CHW tensor (test/images.read_chw, normalised on the compute device
    by extract_features, as test.py's images are); UserError whose message is
    the reason (without the path) when it is missing, empty, truncated or not decodable."""
    path = resolve_entry(root, entry)
    if not os.path.exists(path):
        raise UserError(f"file does not exist (neither {IMAGE_DIR}/{entry} nor {entry} under the data directory)")
    try:
        return read_chw(path)
    except UserError as error:
        message, prefix = str(error), f"cannot read image {path}: "
        raise UserError(message[len(prefix):] if message.startswith(prefix) else message.replace(path, entry)) from None


def failure_reason(root, entry):
    """Why `entry` cannot be used, or None when it loads."""
    try:
        load_entry(root, entry)
    except UserError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - OpenCV and the OS raise many types
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return None


# --------------------------------------------------------------------------------------------
# Failure-tolerant extraction
# --------------------------------------------------------------------------------------------

def _marker():
    """Stands in for an unreadable image: 1x1 and NaN, which no real normalised image can be."""
    return torch.full((3, 1, 1), float("nan"))


class TolerantImages(Dataset):
    """Entries [start, end) of a list as (local index, CHW uint8 tensor); an image that cannot be
    loaded yields the float NaN marker instead of raising, so extraction carries on (the marker is
    float, so it never shares a batch with an image and passes normalisation untouched)."""

    def __init__(self, root, entries):
        self.root = os.fspath(root)
        self.entries = list(entries)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        try:
            return index, load_entry(self.root, self.entries[index])
        except Exception:  # noqa: BLE001 - recorded (reason re-derived) by extract_part
            return index, _marker()


class MarkerAware(nn.Module):
    """The descriptor, except that marker images give NaN rows without running the network.
    Batches without a marker (every batch bigger than 1x1) go straight to the descriptor."""

    def __init__(self, descriptor, dim):
        super().__init__()
        self.descriptor = descriptor
        self.dim = dim
        self.input_norm = getattr(descriptor, "input_norm", CVNET_INPUT)  # the extraction loop normalises with it

    def forward(self, images):
        if tuple(images.shape[-2:]) != (1, 1):
            return self.descriptor(images)
        marked = torch.isnan(images).flatten(1).any(1)
        out = torch.full((images.shape[0], self.dim), float("nan"), device=images.device)
        if not bool(marked.all()):
            out[~marked] = self.descriptor(images[~marked]).float()
        return out


def extract_part(descriptor, image_list, start, end, device, batch_size, num_workers, precision, desc, dim,
                 options=None):
    """Features of entries [start, end): ((n, dim) float32 with zero rows for failures, failures).

    Uses test/extract.extract_features, the path of test.py's database features. Failed rows come
    back as NaN (markers, or a non-finite descriptor); their reasons are re-derived here."""
    dataset = TolerantImages(image_list.root, image_list.entries[start:end])
    features = extract_features(MarkerAware(descriptor, dim), dataset, device, batch_size=batch_size,
                                num_workers=num_workers, precision=precision, desc=desc, options=options)
    failed = []
    for local in np.flatnonzero(~np.isfinite(features).all(axis=1)):
        entry = dataset.entries[local]
        reason = failure_reason(image_list.root, entry)
        if reason is None:
            reason = (f"descriptor is not finite (NaN or Inf) with TEST.PRECISION {precision}"
                      + ("; try fp32" if precision != "fp32" else ""))
        failed.append({"index": start + int(local), "path": entry, "reason": reason})
        features[local] = 0
    return features, failed


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------

def part_ranges(count, shard_size):
    """[(start, end)] of the parts: contiguous runs of `shard_size` list entries."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def parts_of_shard(num_parts, num_shards, shard_id):
    """Shard `shard_id` of `num_shards` takes parts shard_id, shard_id + num_shards, ..."""
    return list(range(shard_id, num_parts, num_shards))


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# The work directory
# --------------------------------------------------------------------------------------------

def run_identity(fingerprint, image_list, shard_size, dim):
    """What run.json stores: the same bytes for every process and every restart of one run."""
    return {"format": RUN_FORMAT, "fingerprint": fingerprint,
            "image_list": {"file": LIST_NAME, "sha256": image_list.sha256, "count": len(image_list)},
            "shard_size": shard_size, "feature_dim": dim}


# The fields each JSON record of the job must hold, with their types: the one reader below checks
# them, so a record that is valid JSON of another shape is never indexed into.
_IMAGE_LIST = {"sha256": str, "count": int}
RUN_FIELDS = {"format": str, "fingerprint": dict, "image_list": dict, "shard_size": int, "feature_dim": int}
PART_FIELDS = {"format": str, "start": int, "end": int, "dim": int, "data_bytes": int, "data_sha256": str,
               "failed": list, "fingerprint": dict, "image_list": dict}
SIDECAR_FIELDS = {"format": str, "fingerprint": dict, "image_list": dict, "output_bytes": int,
                  "output_sha256": str}


def _shape_problem(value, fields):
    if not isinstance(value, dict):
        return f"expected a JSON object, found {type(value).__name__}"
    for key, kind in fields.items():
        if key not in value:
            return f"it lacks the key {key!r}"
        if not isinstance(value[key], kind) or (kind is int and isinstance(value[key], bool)):
            return f"{key!r} is {type(value[key]).__name__}, expected {kind.__name__}"
    if any(not isinstance(item, dict) or not isinstance(item.get("index"), int) for item in value.get("failed", [])):
        return "'failed' holds an entry without an integer 'index'"
    if "image_list" in fields:
        problem = _shape_problem(value["image_list"], _IMAGE_LIST)
        return problem and f"image_list: {problem}"
    return None


def read_record(path, fields) -> dict:
    """The JSON object at `path` (run.json, a part record, the output's sidecar), checked to hold
    `fields` with their types. ValueError saying what is wrong when it is not JSON, not an object,
    or lacks a field; OSError when it cannot be read; UserError when it is not a regular file."""
    record = json.loads(readable_file(Path(path)).read_text())
    problem = _shape_problem(record, fields)
    if problem:
        raise ValueError(f"{Path(path).name}: {problem}")
    return record


def identity_differences(expected, found):
    """`key: now vs then` for each setting on which two run identities disagree."""
    diffs = fingerprint_differences(expected.get("fingerprint", {}), found.get("fingerprint", {}))
    old, new = expected.get("image_list", {}), found.get("image_list", {})
    if (old.get("sha256"), old.get("count")) != (new.get("sha256"), new.get("count")):
        diffs.append(f"image list: {new.get('count')} images sha256 {str(new.get('sha256'))[:12]} vs "
                     f"{old.get('count')} images sha256 {str(old.get('sha256'))[:12]}")
    for key, flag in (("shard_size", "--shard-size"), ("feature_dim", "feature_dim"), ("format", "format")):
        if expected.get(key) != found.get(key):
            diffs.append(f"{flag}: {found.get(key)!r} vs {expected.get(key)!r}")
    return diffs


class WorkDir:
    """FILE.parts/: run.json plus one .npy/.json pair per finished part."""

    def __init__(self, output, identity):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".parts")
        self.identity = identity
        count, size = identity["image_list"]["count"], identity["shard_size"]
        self.ranges = part_ranges(count, size)
        self.dim = identity["feature_dim"]

    def exists(self):
        return (self.path / "run.json").is_file()

    def _start_over(self):
        return f"to start over delete {self.path} or choose another --output"

    def open(self, create=True):
        """Check (or create) run.json; UserError naming the differences when it is another run's."""
        run_file = self.path / "run.json"
        if readable_file(run_file).is_file():
            try:
                stored = read_record(run_file, RUN_FIELDS)
            except (OSError, ValueError, RecursionError) as error:
                raise UserError(f"cannot read {run_file} ({error}); {self._start_over()}") from None
            diffs = identity_differences(stored, self.identity)
            if diffs:
                raise UserError(f"{self.path} holds a run with other settings (now vs then: "
                                f"{'; '.join(diffs)}); {self._start_over()}")
            return self
        if not create:
            raise UserError(f"no work directory {self.path}: nothing to merge; run the extraction first")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create {self.path}: {error.strerror}") from None
        self.done()  # parts left without their run.json must be of these settings, else stop here
        atomic_write(run_file, json_bytes(self.identity))
        return self

    def remove_stale_temps(self):
        remove_stale_temps(self.path)

    def _names(self, part):
        return self.path / f"part-{part:06d}.npy", self.path / f"part-{part:06d}.json"

    def record(self, part):
        """The part's commit record when the part is done (record and data file agree), else None.
        A finished part made with other settings is refused (UserError naming the differences)."""
        data_file, record_file = self._names(part)
        try:
            record = read_record(record_file, PART_FIELDS)
            start, end = self.ranges[part]
            ok = (record.get("format") == PART_FORMAT and record.get("start") == start
                  and record.get("end") == end and record.get("dim") == self.dim
                  and data_file.stat().st_size == record.get("data_bytes"))
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        if ok:
            self._check_provenance(part, record)
        return record if ok else None

    def _check_provenance(self, part, record):
        """run.json says what this directory computes; each part says what it was computed with. They
        differ when parts were copied in, or run.json was deleted and re-created by another run."""
        made_with = {"fingerprint": record.get("fingerprint"), "image_list": record.get("image_list") or {}}
        now = {"fingerprint": self.identity["fingerprint"], "image_list": self.identity["image_list"]}
        diffs = identity_differences(made_with, now) if isinstance(made_with["fingerprint"], dict) else \
            ["fingerprint: none recorded"]
        if diffs:
            raise UserError(f"part {part} in {self.path} was made with other settings (now vs then: "
                            f"{'; '.join(diffs)}); delete {self._names(part)[1].name} and "
                            f"{self._names(part)[0].name} to recompute it, or {self._start_over()}")

    def done(self):
        return {part for part in range(len(self.ranges)) if self.record(part) is not None}

    def commit(self, part, features, failed, info):
        """Write a part: data first, then its record (which makes it count as done)."""
        start, end = self.ranges[part]
        assert features.shape == (end - start, self.dim) and features.dtype == np.float32
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(features), allow_pickle=False)
        data = buffer.getvalue()
        data_file, record_file = self._names(part)
        atomic_write(data_file, data)
        record = {"format": PART_FORMAT, "part": part, "start": start, "end": end, "dim": self.dim,
                  "data_file": data_file.name, "data_bytes": len(data),
                  "data_sha256": hashlib.sha256(data).hexdigest(), "failed": failed,
                  "fingerprint": self.identity["fingerprint"], "image_list": self.identity["image_list"], **info}
        atomic_write(record_file, json_bytes(record))

    def load(self, part):
        """The part's rows, checked against its record; a damaged part is removed (UserError)."""
        data_file, record_file = self._names(part)
        record = self.record(part)
        damaged = record is None
        if not damaged:
            data = data_file.read_bytes()
            damaged = hashlib.sha256(data).hexdigest() != record["data_sha256"]
        if damaged:
            record_file.unlink(missing_ok=True)
            data_file.unlink(missing_ok=True)
            raise UserError(f"part {part} in {self.path} was damaged (checksum mismatch) and has been removed: "
                            "run the same command again to recompute it")
        features = np.load(io.BytesIO(data), allow_pickle=False)
        start, end = self.ranges[part]
        if features.shape != (end - start, self.dim) or features.dtype != np.float32:
            raise UserError(f"part {part} in {self.path} has shape {features.shape}; {self._start_over()}")
        return features, record["failed"]


# --------------------------------------------------------------------------------------------
# Merge and sidecar
# --------------------------------------------------------------------------------------------

def save_tensor(path, features):
    """torch.save of the (N, D) tensor, atomically. Written to a handle, not a path: given a path,
    torch.save names the archive inside after the file (here a temporary name), so the bytes would
    differ from run to run; through a handle the archive is always "archive" and the bytes depend
    only on the tensor."""
    def write(handle):
        try:
            torch.save(torch.from_numpy(features), handle)
        except RuntimeError as error:  # torch wraps the handle's OSError (e.g. disk full) in a RuntimeError
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise

    atomic_write(path, write)


def merge(workdir, output):
    """Assemble FILE from all parts in list order, then write FILE.json. Returns the sidecar dict.
    Several processes may merge at once: they write identical bytes, each by atomic rename."""
    identity = workdir.identity
    count, dim = identity["image_list"]["count"], workdir.dim
    features = np.zeros((count, dim), dtype=np.float32)
    failed = []
    for part, (start, end) in enumerate(workdir.ranges):
        rows, part_failed = workdir.load(part)
        features[start:end] = rows
        failed.extend(part_failed)
    failed.sort(key=lambda item: item["index"])
    output = Path(output)
    remove_stale_temps(output.parent, output.name)
    remove_stale_temps(output.parent, sidecar_path(output).name)
    save_tensor(output, features)
    fingerprint = identity["fingerprint"]
    sidecar = {
        "format": SIDECAR_FORMAT,
        "features": output.name,
        "rows": "row i is the i-th non-blank line of the image list; failed images have all-zero rows",
        "count": count,
        "dim": dim,
        "dtype": "float32",
        "depth": fingerprint["depth"],
        "scales": fingerprint["scales"],
        "precision": fingerprint["precision"],
        "fingerprint": fingerprint,
        "image_list": identity["image_list"],
        "failed_count": len(failed),
        "failed": failed,
        "output_bytes": output.stat().st_size,
        "output_sha256": file_sha256(output),
    }
    atomic_write(sidecar_path(output), json_bytes(sidecar))
    return sidecar


def completed_sidecar(output, identity):
    """The sidecar when FILE and FILE.json exist, were made by this run, and FILE still has the
    sha256 the sidecar recorded (a file damaged or replaced with one of the same size is not
    complete), else None."""
    output = Path(output)
    try:
        sidecar = read_record(sidecar_path(output), SIDECAR_FIELDS)
        same = (sidecar.get("format") == SIDECAR_FORMAT and sidecar.get("fingerprint") == identity["fingerprint"]
                and sidecar.get("image_list") == identity["image_list"]
                and output.stat().st_size == sidecar.get("output_bytes")  # cheap first: no hashing when it differs
                and file_sha256(output) == sidecar.get("output_sha256"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return sidecar if same else None
