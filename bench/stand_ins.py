"""Inputs for the extraction benchmarks, built here (bench/ does not import tests/): JPEGs with the
real ROxford size distribution and a calibrated random CVNet checkpoint (real weights are not
available on this machine)."""

from pathlib import Path

import cv2
import numpy as np

from test.data.synthetic import random_resnet, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIZES_DB = ROOT.parent / "shared" / "data" / "revisitop" / "roxford5k_sizes_db.txt"


def roxford_sizes(count, seed=0):
    """`count` (width, height) pairs drawn from the real ROxford5k database (1024x768 without the list)."""
    if not SIZES_DB.is_file():
        return [(1024, 768)] * count
    sizes = [tuple(int(v) for v in line.split(",")[2:4]) for line in SIZES_DB.read_text().split()]
    picks = np.random.default_rng(seed).choice(len(sizes), size=count, replace=False)
    return [sizes[i] for i in picks]


def photo_like(width, height, rng):
    """Smooth colour fields plus fine noise: decodes like a photo (JPEG work per pixel)."""
    base = rng.random((max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    image = 0.85 * image + 0.15 * rng.random((height, width, 3), dtype=np.float32)
    return np.clip(255 * image, 0, 255).astype(np.uint8)


def write_jpegs(folder, sizes, seed=0, quality=90):
    """One JPEG per (width, height); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"im{i:04d}.jpg"
        cv2.imwrite(str(path), photo_like(w, h, rng), [cv2.IMWRITE_JPEG_QUALITY, quality])
        paths.append(str(path))
    return paths


def calibrated_resnet_state(depth=50, seed=0):
    """A random CVNet ResNet whose features still tell images apart (test/synthetic.random_resnet:
    He-initialised convolutions, BN statistics calibrated on noise)."""
    return random_resnet(depth, seed).state_dict()


def write_cvnet_checkpoint(path, depth=50, seed=0):
    """The random weights in CVNet's checkpoint layout, loadable with TEST.WEIGHTS <path>."""
    write_checkpoint(path, depth=depth, seed=seed)
    return str(path)
