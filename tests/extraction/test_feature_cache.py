"""The feature cache serves exactly what extraction computed, and never stale features."""

import os

import numpy as np
import pytest

from test.extraction.feature_cache import FeatureCache

FINGERPRINT = {"depth": 50, "rgem": True, "scales": [0.7071, 1.0, 1.4142], "weights_sha256": "ab"}


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(bytes([i]) * 10)
        paths.append(path)
    return paths


def counting(features):
    calls = []

    def compute():
        calls.append(1)
        return features

    return compute, calls


def test_round_trip_skips_extraction(tmp_path, images):
    features = np.random.default_rng(0).random((3, 8), dtype=np.float32)
    cache = FeatureCache(tmp_path / "cache", FINGERPRINT)
    compute, calls = counting(features)
    first, hit1 = cache.get_or_compute("db", images, None, compute)
    second, hit2 = cache.get_or_compute("db", images, None, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert np.array_equal(second, features) and second.dtype == np.float32


@pytest.mark.parametrize("change", ["flag", "weights", "scales", "box", "image", "list"])
def test_any_change_that_affects_features_misses(tmp_path, images, change):
    cache = FeatureCache(tmp_path / "cache", FINGERPRINT)
    boxes = [(0, 0, 5, 5)] * 3
    cache.get_or_compute("q", images, boxes, lambda: np.zeros((3, 4), np.float32))
    fingerprint, paths = dict(FINGERPRINT), list(images)
    if change == "flag":
        fingerprint["rgem"] = False
    elif change == "weights":
        fingerprint["weights_sha256"] = "cd"
    elif change == "scales":
        fingerprint["scales"] = [1.0]
    elif change == "box":
        boxes = [(0, 0, 5, 6)] + boxes[1:]
    elif change == "image":
        images[1].write_bytes(b"another picture")
        os.utime(images[1], ns=(1, 1))
    else:
        paths = paths[:2] + [paths[0]]
    compute, calls = counting(np.ones((3, 4), np.float32))
    features, hit = FeatureCache(tmp_path / "cache", fingerprint).get_or_compute("q", paths, boxes, compute)
    assert not hit and calls == [1] and features[0, 0] == 1


def test_damaged_entry_is_recomputed_not_served(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", FINGERPRINT)
    cache.get_or_compute("db", images, None, lambda: np.zeros((3, 4), np.float32))
    entry = cache.entry("db", images)
    entry.write_bytes(entry.read_bytes()[:40])
    compute, calls = counting(np.ones((3, 4), np.float32))
    features, hit = cache.get_or_compute("db", images, None, compute)
    assert not hit and calls == [1] and np.array_equal(np.load(entry), features)
    assert not [p for p in entry.parent.iterdir() if ".tmp" in p.name]


def test_unwritable_cache_only_warns(tmp_path, images, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = FeatureCache(blocker / "cache", FINGERPRINT)
    features, hit = cache.get_or_compute("db", images, None, lambda: np.ones((3, 2), np.float32))
    assert not hit and features.shape == (3, 2)
    assert "feature cache not written" in capsys.readouterr().out


def test_entry_of_another_width_is_recomputed(tmp_path, images):
    """An entry whose width is not the descriptor's (a file swapped in, a head of another size) is
    never served: it is recomputed and replaced."""
    cache = FeatureCache(tmp_path / "cache", FINGERPRINT, dim=4)
    cache.get_or_compute("db", images, None, lambda: np.zeros((3, 4), np.float32))
    entry = cache.entry("db", images)
    np.save(entry, np.zeros((3, 6), np.float32))
    compute, calls = counting(np.ones((3, 4), np.float32))
    features, hit = cache.get_or_compute("db", images, None, compute)
    assert not hit and calls == [1] and np.load(entry).shape == (3, 4) and features[0, 0] == 1
