"""Batched feature extraction: images of the same size share a forward pass, the rest go one by one.

Image sizes are only known once decoded, so decoded images wait in per-size buckets: a bucket runs
when it holds `batch_size` images; when too many images wait, the oldest bucket runs as it is (an
image with a size of its own runs alone, as in the official one-by-one loop). Features land at
their dataset index, so the output order never depends on the batching.

Datasets ship uint8 CHW images; they are normalised on the compute device (test.data.images.
normalize_images), bit-identical to the CPU normalisation. Float images pass through as they are
(already normalised: test inputs, R1M failure markers). The speed switches (test/extraction/runtime.py
ExtractOptions: batch, workers, threads, BN folding, channels-last, pinned memory, non-blocking
copies, uint8 transfer) default to "auto", decided per device.
"""

import contextlib
import copy
import warnings
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from errors import UserError
from model.backbone import CVNET_INPUT
from model.inference import prepare_for_inference
from model.precision import apply_precision_plan
from test.data.images import normalize_for
from test.extraction.runtime import ExtractOptions, tune_worker


class _ErrorsAsValues(Dataset):
    """Returns a UserError's message instead of raising it, so it crosses worker processes intact.
    With `normalize` (an InputNorm), uint8 images are normalised here, in the worker (the plain path)."""

    def __init__(self, dataset, normalize=None):
        self.dataset = dataset
        self.normalize = normalize

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            index, image = self.dataset[index]
        except UserError as error:
            return index, str(error)
        if self.normalize is not None and not isinstance(image, str) and image.dtype == torch.uint8:
            image = normalize_for(image, self.normalize)
        return index, image


def check_precision(device, precision, setting="TEST.PRECISION"):
    """UserError when `precision` cannot run on `device` (fp16 autocast is CUDA-only); `setting` is
    how the caller names it (the API's argument is `precision`)."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"{setting} fp16 needs a CUDA device: use fp32 or bf16 on CPU")


def autocast_context(device, precision):
    """Autocast for bf16/fp16 on `device`; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(device, precision)
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
        key = (tuple(image.shape[-2:]), image.dtype)  # a float marker never joins uint8 images
        group = self.groups.setdefault(key, [])
        group.append((index, image))
        self.waiting += 1
        ready = []
        if len(group) >= self.batch_size:
            ready.append(self._pop(key))
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


_WARNED = set()  # precision warnings already printed by this process


def with_precision_plan(model, descriptor, precision):
    """`model` (prepared from `descriptor`) with the descriptor's precision plan applied when
    `precision` is reduced: its fp32 modules become fp32 islands (model/precision.py), on a copy.
    fp32 returns `model` itself. A plan's warning (what reduced precision costs with this backbone
    is not known to be small) is printed once per process."""
    plan = getattr(descriptor, "precision_plan", None)
    if precision == "fp32" or plan is None:
        return model
    line = f"warning: TEST.PRECISION {precision}: {plan.warning}"
    if plan.warning and line not in _WARNED:
        _WARNED.add(line)
        print(line, flush=True)
    return apply_precision_plan(model, plan, copy_first=model is descriptor)


def prepared_descriptor(descriptor, options):
    """A copy of `descriptor` with BN folded / channels-last as `options` (resolved) say; the
    caller's module (and its parameter names) stay as they are."""
    if not (options.on("fold_bn") or options.on("channels_last")):
        return descriptor
    return prepare_for_inference(copy.deepcopy(descriptor), fold_bn=options.on("fold_bn"),
                                 channels_last=options.on("channels_last"))


def extract_features(descriptor, dataset, device, batch_size=0, num_workers=-1, precision="fp32",
                     desc="extract", options=None, norm=None, progress=True):
    """Run `descriptor` over every image of `dataset` ((index, CHW tensor) items): (len, D) float32.

    uint8 images (BGR) are normalised as `norm` (model/backbone.py InputNorm) says; default: the
    descriptor's own `input_norm`, else CVNet's. `batch_size` and
    `num_workers` override `options` (ExtractOptions) when given (> 0, >= 0); "auto" values are
    decided for `device` (test/extraction/runtime.py). `progress=False` turns the tqdm bar off."""
    device = torch.device(device)
    options = replace(options or ExtractOptions(), **({"batch_size": batch_size} if batch_size > 0 else {}),
                      **({"num_workers": num_workers} if num_workers >= 0 else {})).resolve(device)
    torch.set_num_threads(options.num_threads)
    channels_last, non_blocking = options.on("channels_last"), options.on("non_blocking")
    model = with_precision_plan(prepared_descriptor(descriptor, options), descriptor, precision)
    norm = norm or getattr(descriptor, "input_norm", CVNET_INPUT)
    in_worker = None if options.on("uint8_transfer") else norm
    workers = options.num_workers
    loader = DataLoader(_ErrorsAsValues(dataset, in_worker), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=options.on("pin_memory"),
                        worker_init_fn=tune_worker if workers else None,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    features = None
    buckets = _Buckets(options.batch_size, max_waiting=2 * options.batch_size + 8)

    def run(group):
        nonlocal features
        indices = [index for index, _ in group]
        batch = torch.stack([image for _, image in group]).to(device, non_blocking=non_blocking)
        if batch.dtype == torch.uint8:
            batch = normalize_for(batch, norm)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            out = model(batch).float().cpu().numpy()
        if features is None:
            features = np.zeros((len(dataset), out.shape[1]), dtype=np.float32)
        features[indices] = out
        bar.update(len(indices))

    with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress) as bar:
        with warnings.catch_warnings():  # pinning asked for without an accelerator: torch skips it
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            items = iter(loader)
        for index, image in items:
            if isinstance(image, str):
                raise UserError(image)
            for group in buckets.add(int(index), image):
                run(group)
        for group in buckets.drain():
            run(group)
    if features is None:
        raise UserError(f"{desc}: no images to extract")
    return features

