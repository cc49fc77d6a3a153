"""The interface every backbone implements, in the style of timm:

    forward_features(images) -> last feature map (B, C, h, w)   (each backbone's own)
    forward_pool(fmap)       -> its own pooling (B, C)          (``head.pool``: used when GeM+ is off)
    forward_head(pooled)     -> descriptor (B, D)               (``head.fc``: whitening, or identity)

SuperGlobal's pooling plugs in between forward_features and forward_head (model/superglobal.py).
A backbone registers itself in model/registry.py.
"""

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class InputNorm:
    """What a network takes: ``(uint8 / 255 - mean[c]) / std[c]`` per BGR channel, then the channels
    reversed to RGB when `rgb`."""

    mean_bgr: tuple
    std_bgr: tuple
    rgb: bool = False


# CVNet (ImageNet statistics, BGR: the official loader's _MEAN / _SD).
CVNET_INPUT = InputNorm((0.406, 0.456, 0.485), (0.225, 0.224, 0.229))


class RetrievalBackbone(nn.Module):
    """Base class: subclasses define `forward_features` and a `head` with `pool` and `fc`."""

    def forward_features(self, images):
        raise NotImplementedError

    def forward_pool(self, fmap):
        """The checkpoint's own pooling, used when GeM+ is off: (B, C, h, w) -> (B, C)."""
        return self.head.pool(fmap)

    def forward_head(self, pooled):
        """Pooled (B, C) -> descriptor (B, D) through ``head.fc``."""
        return self.head.fc(pooled)

    def forward(self, images):
        return self.forward_features(images)
