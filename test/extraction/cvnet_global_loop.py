"""The CVNet-Global baseline's images and extraction loop, as CVNet's own test code has them.

Images: CVNet's ``test/dataset.py`` (sungonce/CVNet, ``DataSet.__getitem__``; SuperGlobal's copy is
the same) resizes the uint8 image per scale in the loader:

    im = cv2.imread(path)                                     # BGR uint8
    im = im[int(bbx[1]):int(bbx[3]), int(bbx[0]):int(bbx[2])] # queries only
    per scale of scale_list ([0.7071, 1.0, 1.4142] by default):
        scale == 1.0: the uint8 image as it is
        scale <  1.0: cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        scale >  1.0: cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        .astype(np.float32), HWC -> CHW, / 255, per channel (x - mean) / sd  (BGR mean/sd)

With ``dsize=(0, 0)`` OpenCV makes the output ``(round(w*s), round(h*s))`` and maps pixels with
exactly fx/fy. ``upscale="cubic"`` (INTER_CUBIC above scale 1) is NOT CVNet's: it is kept only to
reproduce numbers made with that earlier, mistaken default of this project. Sizes are at least 1
pixel (OpenCV would refuse a 0-pixel output).

Loop: one image at a time, every scale separately, like CVNet's ``test/test_utils.py``
``extract_feature`` (DataLoader batch size 1)::

    backbone = build_cvnet_global(50); load_weights(backbone, "./weights", 50)
    X = extract_cvnet_global(backbone, paths, None, "cuda")
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from errors import UserError
from model.cvnet_global import combine_scales, cvnet_single_scale
from test.data.images import crop_box, normalize, read_image
from test.extraction.extract import _ErrorsAsValues, autocast_context
from test.extraction.runtime import quiet_worker

CVNET_SCALES = (0.7071, 1.0, 1.4142)
UPSCALE = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}  # linear: CVNet's code


def resized_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(w, h) after ``cv2.resize(dsize=(0, 0), fx=scale, fy=scale)``: cvRound of w*s, h*s."""
    return max(1, int(np.rint(width * scale))), max(1, int(np.rint(height * scale)))


def cvnet_resize(im: np.ndarray, scale: float, upscale: str = "linear") -> np.ndarray:
    """Resize a uint8 HxWx3 image by ``scale`` as the CVNet test loader does (see module docstring)."""
    if scale == 1.0:
        return im
    interpolation = cv2.INTER_AREA if scale < 1.0 else UPSCALE[upscale]
    height, width = im.shape[:2]
    size = resized_size(width, height, scale)
    if size == (int(np.rint(width * scale)), int(np.rint(height * scale))):
        return cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=interpolation)
    return cv2.resize(im, dsize=size, interpolation=interpolation)  # a side would round to 0 pixels


class CVNetImages(Dataset):
    """``ds[i] = (i, [CHW float32 tensor per scale])``; ``bboxes`` None (database) or one per image."""

    def __init__(self, paths: Sequence[str | os.PathLike], bboxes=None, scales=CVNET_SCALES,
                 upscale: str = "linear"):
        self.paths = [os.fspath(p) for p in paths]
        if bboxes is not None:
            bboxes = [tuple(float(v) for v in b) for b in bboxes]
            if len(bboxes) != len(self.paths):
                raise ValueError(f"got {len(bboxes)} boxes for {len(self.paths)} images")
        if upscale not in UPSCALE:
            raise ValueError(f"upscale must be one of {sorted(UPSCALE)}, got {upscale!r}")
        self.bboxes, self.scales, self.upscale = bboxes, [float(s) for s in scales], upscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        im = read_image(self.paths[index])
        if self.bboxes is not None:
            im = crop_box(im, self.bboxes[index], self.paths[index])
        return index, [torch.from_numpy(normalize(cvnet_resize(im, s, self.upscale))) for s in self.scales]



def extract_cvnet_global(backbone, paths, bboxes=None, device="cpu", scales=CVNET_SCALES, num_workers=0,
                         precision="fp32", upscale="linear", desc="cvnet-global"):
    """CVNet-Global descriptors of the images ``paths`` (queries: one box per path): (n, D) float32."""
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    dataset = CVNetImages(paths, bboxes, scales, upscale)
    if len(dataset) == 0:
        raise UserError(f"{desc}: no images to extract")
    loader = DataLoader(_ErrorsAsValues(dataset), batch_size=None, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=quiet_worker if num_workers else None)
    per_scale = torch.zeros(len(dataset.scales), len(dataset), backbone.head.fc.out_features)
    with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit="img") as bar:
        for index, images in loader:
            if isinstance(images, str):
                raise UserError(images)
            for s, image in enumerate(images):
                with autocast_context(device, precision):
                    out = cvnet_single_scale(backbone, image.unsqueeze(0).to(device))
                per_scale[s, int(index)] = out[0].float().cpu()
            bar.update(1)
    return combine_scales(per_scale).numpy().astype("float32", copy=False)
