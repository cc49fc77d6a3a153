"""On-disk cache of extracted features, keyed by everything that changes them.

The key hashes the descriptor fingerprint (weights sha256, depth, pooling flags and powers, scales,
precision) with the image list: each path, its query box, and the file's size and modification
time, so an edited image is re-extracted too. A run that only changes reranking or evaluation
options finds its features here and skips extraction; any change that affects features misses.
Entries are written atomically (temporary file + rename) and checked on load (shape, dtype,
finite values); a damaged entry is ignored and rewritten, never served.
"""

import os
from pathlib import Path

import numpy as np

from errors import UserError
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


class FeatureCache:
    """Features in `<directory>/<name>-<key>.npy`, with a JSON note of what they are beside them."""

    def __init__(self, directory, fingerprint, dim=None):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.dim = dim  # descriptor width: an entry of another width is recomputed

    def entry(self, name, paths, bboxes=None):
        key = fingerprint_digest(self.fingerprint, image_list_signature(paths, bboxes))
        return self.directory / f"{name}-{key}.npy"

    def load(self, entry, count):
        """The cached (count, D) float32 features, or None when absent or unusable."""
        try:
            features = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        usable = (features.dtype == np.float32 and features.ndim == 2 and features.shape[0] == count
                  and (self.dim is None or features.shape[1] == self.dim) and np.isfinite(features).all())
        return features if usable else None

    def store(self, entry, features, note):
        """Write atomically; a cache that cannot be written only costs speed, so errors are returned."""
        try:
            save_npy(entry, features, " (feature cache)")
            save_json(entry.with_suffix(".json"), {**note, "fingerprint": self.fingerprint}, " (feature cache)")
        except UserError as error:
            return f"feature cache not written ({error})"
        return None

    def get_or_compute(self, name, paths, bboxes, compute):
        """Cached features for this image list, else `compute()` and store them. Returns (features, hit)."""
        entry = self.entry(name, paths, bboxes)
        features = self.load(entry, len(paths))
        if features is not None:
            return features, True
        features = compute()
        problem = self.store(entry, features, {"name": name, "count": len(paths)})
        if problem:
            print(f"warning: {problem}", flush=True)
        return features, False
