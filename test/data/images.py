"""Image loading exactly as the official SuperGlobal / CVNet test loader does it.

``cv2.imread`` (default flag: 3-channel BGR uint8; grayscale, alpha, CMYK and 16-bit images are
converted, EXIF orientation is applied), refusing what it would silently damage (a truncated JPEG),
optional query crop ``im[int(y1):int(y2), int(x1):int(x2)]``, then in float32:
``im / 255.0``, per channel ``(im - mean[c]) / std[c]`` (BGR order), HWC -> CHW. No resizing.

The datasets ship the uint8 CHW image (a quarter of the float32 bytes through the DataLoader's
shared memory and the host-to-device copy); `normalize_images` then runs on the compute device, in
float32, bit-identical to the official numpy arithmetic (tests/data/test_images.py checks it).
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from errors import UserError, is_utf8, special_kind
from model.backbone import CVNET_INPUT, InputNorm

# BGR order, as in the official loader (_MEAN / _SD of CVNet's test dataset).
MEAN_BGR = np.array(CVNET_INPUT.mean_bgr, dtype=np.float32)
STD_BGR = np.array(CVNET_INPUT.std_bgr, dtype=np.float32)


def jpeg_truncated(path: str | os.PathLike) -> bool:
    """True for a JPEG (starts with FFD8) with no end-of-image marker FFD9 after its last
    start-of-scan FFDA. OpenCV decodes such files with a warning, filling the rest with gray."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(b"\xff\xd8"):
        return False
    return data.rfind(b"\xff\xd9") <= data.rfind(b"\xff\xda")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """``cv2.imread(path)``: HxWx3 uint8 BGR. UserError naming the path if it cannot be read."""
    path = os.fspath(path)
    if not is_utf8(path):  # OpenCV crashes (segmentation fault) on such a name
        raise UserError(f"cannot read image {path!r}: its name is not valid UTF-8, which OpenCV cannot open; "
                        "rename the file or folder")
    if not os.path.exists(path):
        raise UserError(f"cannot read image {path}: file does not exist; check the dataset directory")
    if not os.path.isfile(path):  # a directory, or a FIFO or device that would block or stream forever
        raise UserError(f"cannot read image {path}: not a regular file ({special_kind(path)}); check the dataset "
                        "directory")
    if os.path.getsize(path) == 0:
        raise UserError(f"cannot read image {path}: file is empty (0 bytes); download it again")
    if jpeg_truncated(path):  # OpenCV would decode it with a warning, the missing part gray
        raise UserError(f"cannot read image {path}: truncated JPEG (no end-of-image marker after the last "
                        "scan); download it again")
    try:
        im = cv2.imread(path)
    except cv2.error as error:  # e.g. a header claiming more pixels than CV_IO_MAX_IMAGE_PIXELS
        reason = "its header claims more pixels than OpenCV allows (set OPENCV_IO_MAX_IMAGE_PIXELS to " \
                 "allow it)" if "CV_IO_MAX_IMAGE_PIXELS" in str(error) else " ".join(str(error).split())[-120:]
        raise UserError(f"cannot read image {path}: {reason}; check or replace the file") from None
    if im is None:
        raise UserError(f"cannot read image {path}: OpenCV could not decode it (corrupt or not an "
                        "image); download it again")
    return im


def require_images(paths: Sequence[str | os.PathLike], what: str) -> None:
    """Stop before any work when images are missing, naming how many and the first one."""
    foreign = [os.fspath(p) for p in paths if not is_utf8(os.fspath(p))]
    if foreign:
        raise UserError(f"{len(foreign)} of {len(paths)} {what} images have names that are not valid UTF-8, "
                        f"which OpenCV cannot open, first {foreign[0]!r}: rename them")
    missing = [os.fspath(p) for p in paths if not os.path.isfile(p)]
    special = [p for p in missing if special_kind(p) not in (None, "a directory")]
    if special:  # a FIFO or device would block or stream forever once opened: never "missing"
        raise UserError(f"{len(special)} of {len(paths)} {what} images are not regular files, first {special[0]} "
                        f"({special_kind(special[0])}): replace them with the image files")
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} {what} images are missing, first {missing[0]}: "
                        "check TEST.DATA_DIR and download the images (README: Reproducing the paper)")


def crop_box(im: np.ndarray, bbx: Sequence[float], path: str | os.PathLike = "<image>") -> np.ndarray:
    """Official query crop ``im[int(y1):int(y2), int(x1):int(x2)]`` with bbx = [x1, y1, x2, y2].

    UserError if a coordinate is negative (numpy would wrap it around) or the crop is empty.
    """
    if len(bbx) != 4:
        raise UserError(f"query box {list(bbx)} for image {os.fspath(path)} must be [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (int(v) for v in bbx)
    if min(x1, y1, x2, y2) < 0:
        raise UserError(f"query box {list(bbx)} for image {os.fspath(path)} has a negative "
                        "coordinate; fix the ground-truth bbx")
    crop = im[y1:y2, x1:x2]
    if crop.size == 0:
        h, w = im.shape[:2]
        raise UserError(f"query box {list(bbx)} gives an empty crop of image {os.fspath(path)} "
                        f"({w}x{h}); the box lies outside the image, fix the ground-truth bbx or image")
    return crop


def normalize_images(images: torch.Tensor, mean=MEAN_BGR, std=STD_BGR, rgb: bool = False) -> torch.Tensor:
    """uint8 (..., 3, H, W) BGR -> float32 ``(images / 255 - mean[c]) / std[c]``, on the images' device;
    the channels then reversed to RGB when `rgb` (a backbone trained on RGB, e.g. EfficientNet-Lite).

    Every step is one correctly rounded float32 operation, as numpy's: true division by tensors
    (CUDA turns division by a Python scalar into multiplication by its reciprocal, which differs in
    the last bit), mean and std rounded to float32 first."""
    device = images.device
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).to(device).view(3, 1, 1)
    std = torch.as_tensor(np.asarray(std, dtype=np.float32)).to(device).view(3, 1, 1)
    full_scale = torch.full((1,), 255.0, dtype=torch.float32, device=device)
    out = (images.to(torch.float32) / full_scale - mean) / std
    return out.flip(-3) if rgb else out


def normalize_for(images: torch.Tensor, norm: InputNorm) -> torch.Tensor:
    """`normalize_images` with a backbone's input convention (model/backbone.py InputNorm)."""
    return normalize_images(images, norm.mean_bgr, norm.std_bgr, norm.rgb)


def to_chw(im: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> contiguous uint8 CHW tensor (what the datasets ship)."""
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))


def normalize(im: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 BGR -> float32 3xHxW, ``(im / 255 - mean) / std`` per channel, all float32."""
    return normalize_images(to_chw(im)).numpy()


def read_chw(path: str | os.PathLike, bbx: Sequence[float] | None = None) -> torch.Tensor:
    """Read and optionally crop to ``bbx``: uint8 CHW BGR tensor, not yet normalised."""
    im = read_image(path)
    if bbx is not None:
        im = crop_box(im, bbx, path)
    return to_chw(im)


def load_image(path: str | os.PathLike, bbx: Sequence[float] | None = None,
               norm: InputNorm = CVNET_INPUT) -> np.ndarray:
    """Read, optionally crop to ``bbx``, and normalise for a backbone (default CVNet's): float32
    array (3, H, W)."""
    return normalize_for(read_chw(path, bbx), norm).numpy()


class RevisitopImages(Dataset):
    """Images of one revisitop split; ``bboxes`` is None for the database, one bbx per query else.

    ``ds[i]`` is ``(i, tensor)`` with a uint8 CHW BGR tensor (`normalize_images` makes it the
    network input). Sizes differ per image, so use ``batch_size=1`` (or a custom collate) with a
    DataLoader. Picklable (plain lists only).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], bboxes: Sequence[Sequence[float]] | None = None):
        self.paths = [os.fspath(p) for p in paths]
        if bboxes is not None:
            bboxes = [tuple(float(v) for v in b) for b in bboxes]
            if len(bboxes) != len(self.paths):
                raise ValueError(f"got {len(bboxes)} boxes for {len(self.paths)} images")
        self.bboxes = bboxes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        bbx = None if self.bboxes is None else self.bboxes[index]
        return index, read_chw(self.paths[index], bbx)
