"""Helpers for feature fingerprints (the plain dict of everything a set of features depends on,
built by test.build.descriptor_fingerprint): the weights' sha256, differences and short digests.
Feature caches and the R1M sidecar store fingerprints; two runs whose fingerprints differ must not
share features."""

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from errors import readable_file


def file_sha256(path):
    """Hex sha256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    readable_file(path)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _sha256(path, size, mtime_ns):
    return file_sha256(path)


def weights_sha256(path):
    """sha256 of a weights file (memoised per path, size and modification time)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def fingerprint_differences(expected, found):
    """Human-readable `key: found vs expected` for every key on which two fingerprints disagree."""
    keys = sorted(set(expected) | set(found))
    return [f"{k}: {found.get(k)!r} vs {expected.get(k)!r}" for k in keys if expected.get(k) != found.get(k)]


def fingerprint_digest(fingerprint, *extra):
    """A short stable hash of a fingerprint (plus any extra JSON-able parts), for file names."""
    payload = json.dumps([fingerprint, *extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
