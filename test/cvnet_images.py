"""Images for the CVNet-Global baseline protocol: multi-scale resizing of the uint8 image in the loader.

CVNet's official test loader (test/dataset.py of the CVNet repo, as we recall it; no network here to
re-check) reads ``cv2.imread`` BGR, crops queries ``im[int(y1):int(y2), int(x1):int(x2)]`` and, per
scale of [0.7071, 1.0, 1.4142], resizes the uint8 crop with

    scale == 1: unchanged
    scale <  1: cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    scale >  1: cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)

With ``dsize=(0, 0)`` OpenCV makes the output ``(round(w*s), round(h*s))`` (cvRound) and maps pixels
with exactly fx/fy. Then ``/255``, per-channel BGR mean/std, CHW (test.images.normalize).

Both choices can be switched (``upscale='linear'``: INTER_LINEAR above 1; ``size_rule='floor'``:
explicit dsize ``(int(w*s), int(h*s))``) in case the official file says otherwise. Sizes are at least
1 pixel.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from test.images import crop_box, normalize, read_image

CVNET_SCALES = (0.7071, 1.0, 1.4142)
UPSCALE = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}
SIZE_RULES = ("opencv", "floor")


def resized_size(width: int, height: int, scale: float, size_rule: str = "opencv") -> tuple[int, int]:
    """(w, h) after resizing by ``scale``: cvRound (OpenCV's dsize=(0,0)) or int() truncation."""
    if size_rule == "opencv":
        w, h = int(np.rint(width * scale)), int(np.rint(height * scale))
    elif size_rule == "floor":
        w, h = int(width * scale), int(height * scale)
    else:
        raise ValueError(f"size_rule must be one of {SIZE_RULES}, got {size_rule!r}")
    return max(1, w), max(1, h)


def cvnet_resize(im: np.ndarray, scale: float, upscale: str = "cubic", size_rule: str = "opencv") -> np.ndarray:
    """Resize a uint8 HxWx3 image by ``scale`` as the CVNet test loader does (see module docstring)."""
    if scale == 1.0:
        return im
    interpolation = cv2.INTER_AREA if scale < 1.0 else UPSCALE[upscale]
    height, width = im.shape[:2]
    size = resized_size(width, height, scale, size_rule)
    if size_rule == "opencv" and size == (int(np.rint(width * scale)), int(np.rint(height * scale))):
        return cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=interpolation)
    return cv2.resize(im, dsize=size, interpolation=interpolation)


class CVNetImages(Dataset):
    """``ds[i] = (i, [CHW float32 tensor per scale])``; ``bboxes`` None (database) or one per image."""

    def __init__(self, paths: Sequence[str | os.PathLike], bboxes=None, scales=CVNET_SCALES,
                 upscale: str = "cubic", size_rule: str = "opencv"):
        self.paths = [os.fspath(p) for p in paths]
        if bboxes is not None:
            bboxes = [tuple(float(v) for v in b) for b in bboxes]
            if len(bboxes) != len(self.paths):
                raise ValueError(f"got {len(bboxes)} boxes for {len(self.paths)} images")
        if upscale not in UPSCALE:
            raise ValueError(f"upscale must be one of {sorted(UPSCALE)}, got {upscale!r}")
        if size_rule not in SIZE_RULES:
            raise ValueError(f"size_rule must be one of {SIZE_RULES}, got {size_rule!r}")
        self.bboxes, self.scales = bboxes, [float(s) for s in scales]
        self.upscale, self.size_rule = upscale, size_rule

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        im = read_image(self.paths[index])
        if self.bboxes is not None:
            im = crop_box(im, self.bboxes[index], self.paths[index])
        return index, [torch.from_numpy(normalize(cvnet_resize(im, s, self.upscale, self.size_rule)))
                       for s in self.scales]
