"""The interface every backbone implements, in the style of timm:

    forward_features(images) -> last feature map (B, C, h, w)   (each backbone's own)
    forward_pool(fmap)       -> its own pooling (B, C)          (``head.pool``: used when GeM+ is off)
    forward_head(pooled)     -> descriptor (B, D)               (``head.fc``: whitening, or identity)

SuperGlobal's pooling plugs in between forward_features and forward_head (model/superglobal.py).
A backbone registers itself in model/registry.py.
"""

import torch.nn as nn


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
