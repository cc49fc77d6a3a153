"""Inputs for the extraction benchmarks, built here (bench/ does not import tests/): JPEGs with the
real ROxford size distribution and a calibrated random CVNet checkpoint (real weights are not
available on this machine)."""

from pathlib import Path

import cv2
import numpy as np
import torch

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
    """A random CVNet ResNet whose features still tell images apart: He-initialised convolutions and
    BN statistics calibrated on noise (PyTorch's default init collapses every image to one
    descriptor)."""
    from model.resnet import ResNet

    torch.manual_seed(seed)
    model = ResNet(depth, 2048)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
                module.weight.fill_(0.5 if name.endswith("c_bn") else 1.0)
                module.bias.uniform_(-0.05, 0.05)
        model.head.pool.p.fill_(3.0)
        model.train()
        model(torch.randn(4, 3, 96, 128))
    return model.eval().state_dict()


def write_cvnet_checkpoint(path, depth=50, seed=0):
    """The random weights in CVNet's checkpoint layout, loadable with TEST.WEIGHTS <path>."""
    state = {f"encoder_q.{k}": v for k, v in calibrated_resnet_state(depth, seed).items()}
    torch.save({"model_state": state}, path)
    return str(path)
