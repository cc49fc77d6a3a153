"""On-disk cache of extracted features, keyed by everything that changes them.

The key hashes the descriptor fingerprint (weights sha256, depth, pooling flags and powers, scales,
precision) with the image list: each path, its query box, and the file's size and modification
time, so an edited image is re-extracted too. A run that only changes reranking or evaluation
options finds its features here and skips extraction; any change that affects features misses.
Entries are written atomically (temporary file + rename); the note beside each records the sha256
of its values, and a load checks shape, dtype, finite values and that sha256: a damaged entry (one
bit changed) is reported, recomputed and rewritten, never served.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from errors import UserError, one_line, readable_file
from model.fingerprint import fingerprint_digest
from test.outputs.writer import save_json, save_npy


def image_list_signature(paths, bboxes=None):
    """Paths, boxes, sizes and modification times of the images, as JSON-able rows."""
    rows = []
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
            stamp = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stamp = None
        rows.append([str(path), list(bboxes[i]) if bboxes is not None else None, stamp])
    return rows


def values_sha256(features: np.ndarray) -> str:
    """sha256 of the array's values (C order): what an entry's note records and a load compares."""
    return hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()


class FeatureCache:
    """Features in `<directory>/<name>-<key>.npy`, with a JSON note of what they are beside them."""

    def __init__(self, directory, fingerprint, dim=None):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.dim = dim  # descriptor width: an entry of another width is recomputed

    def entry(self, name, paths, bboxes=None):
        key = fingerprint_digest(self.fingerprint, image_list_signature(paths, bboxes))
        # the key already tells entries apart: a long dataset name is shortened so the entry's name
        # (and its temporary name) stays within the file-name limit
        short = name if len(os.fsencode(name)) <= 100 else os.fsdecode(os.fsencode(name)[:100])
        return self.directory / f"{short}-{key}.npy"

    def load(self, entry, count):
        """(the cached (count, D) float32 features or None, why an entry that is there was not
        used or None). An entry is used only when its values have the sha256 its note records."""
        if not os.path.lexists(entry):
            return None, None
        try:
            readable_file(entry)
            note = json.loads(readable_file(entry.with_suffix(".json")).read_text())
            features = np.load(entry, allow_pickle=False)
        except (UserError, OSError, ValueError, EOFError, RecursionError) as error:
            return None, f"unreadable ({one_line(error)[:120]})"
        usable = (features.dtype == np.float32 and features.ndim == 2 and features.shape[0] == count
                  and (self.dim is None or features.shape[1] == self.dim) and np.isfinite(features).all())
        if not usable:
            return None, f"of shape {features.shape} {features.dtype}, or not finite"
        if not isinstance(note, dict) or note.get("sha256") != values_sha256(features):
            return None, "its values do not have the sha256 recorded in its note"
        return features, None

    def store(self, entry, features, note):
        """Write atomically; a cache that cannot be written only costs speed, so errors are returned."""
        try:
            # the note is written last and names the values' sha256: an entry counts only with it
            entry.with_suffix(".json").unlink(missing_ok=True)
            save_npy(entry, features, " (feature cache)")
            save_json(entry.with_suffix(".json"), {**note, "fingerprint": self.fingerprint,
                                                   "sha256": values_sha256(features)}, " (feature cache)")
        except (UserError, OSError) as error:
            return f"feature cache not written ({one_line(error)})"
        return None

    def get_or_compute(self, name, paths, bboxes, compute):
        """Cached features for this image list, else `compute()` and store them. Returns (features, hit)."""
        entry = self.entry(name, paths, bboxes)
        features, damaged = self.load(entry, len(paths))
        if features is not None:
            return features, True
        if damaged:
            print(f"warning: feature cache entry {entry} is damaged ({damaged}): recomputing it", flush=True)
        features = compute()
        problem = self.store(entry, features, {"name": name, "count": len(paths)})
        if problem:
            print(f"warning: {problem}", flush=True)
        return features, False
