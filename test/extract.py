"""Batched feature extraction: images of the same size share a forward pass, the rest go one by one.

Image sizes are only known once decoded, so decoded images wait in per-size buckets: a bucket runs
when it holds `batch_size` images; when too many images wait, the oldest bucket runs as it is (an
image with a size of its own runs alone, as in the official one-by-one loop). Features land at
their dataset index, so the output order never depends on the batching.
"""

import contextlib
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from errors import UserError


class _ErrorsAsValues(Dataset):
    """Returns a UserError's message instead of raising it, so it crosses worker processes intact."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except UserError as error:
            return index, str(error)


def autocast_context(device, precision):
    """Autocast for bf16/fp16 on `device`; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise UserError("TEST.PRECISION fp16 needs a CUDA device: use fp32 or bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Buckets:
    """Decoded images grouped by size, released as batches."""

    def __init__(self, batch_size, max_waiting):
        self.batch_size = batch_size
        self.max_waiting = max_waiting
        self.groups = OrderedDict()
        self.waiting = 0

    def add(self, index, image):
        """Add one image; return the batches that are ready to run."""
        group = self.groups.setdefault(tuple(image.shape[-2:]), [])
        group.append((index, image))
        self.waiting += 1
        ready = []
        if len(group) >= self.batch_size:
            ready.append(self._pop(tuple(image.shape[-2:])))
        while self.waiting > self.max_waiting:
            ready.append(self._pop(next(iter(self.groups))))
        return ready

    def drain(self):
        while self.groups:
            yield self._pop(next(iter(self.groups)))

    def _pop(self, size):
        group = self.groups.pop(size)
        self.waiting -= len(group)
        return group


def extract_features(descriptor, dataset, device, batch_size=8, num_workers=2, precision="fp32",
                     desc="extract"):
    """Run `descriptor` over every image of `dataset` ((index, CHW tensor) items): (len, D) float32."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        descriptor = descriptor.to(memory_format=torch.channels_last)
    loader = DataLoader(_ErrorsAsValues(dataset), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    features = None
    buckets = _Buckets(batch_size, max_waiting=2 * batch_size + 8)

    def run(group):
        nonlocal features
        indices = [index for index, _ in group]
        batch = torch.stack([image for _, image in group]).to(device, non_blocking=cuda)
        if cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            out = descriptor(batch).float().cpu().numpy()
        if features is None:
            features = np.zeros((len(dataset), out.shape[1]), dtype=np.float32)
        features[indices] = out
        bar.update(len(indices))

    with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit="img") as bar:
        for index, image in loader:
            if isinstance(image, str):
                raise UserError(image)
            for group in buckets.add(int(index), image):
                run(group)
        for group in buckets.drain():
            run(group)
    if features is None:
        raise UserError(f"{desc}: no images to extract")
    return features
