"""The SuperGlobal global descriptor on a CVNet ResNet: per-scale pooling, then Scale-GeM over scales.

One scale:  backbone -> conv5 map -> (Regional-GeM) -> GeM over all positions (GeM+ with a fixed
power, or the checkpoint's learned GeM) -> L2-normalise -> head.fc.
Multi-scale: the normalised image batch is resized to [int(H*s), int(W*s)] (bilinear,
align_corners=False, antialias=False: what torchvision's tensor resize did when the paper's numbers
were made) and run once per scale. Scale-GeM takes the element-wise max of the L2-normalised
per-scale outputs; without it, their mean. The result is L2-normalised.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import CVNET_INPUT
from modules.coarse_retrieval import GeMPlus, RegionalGeM, ScaleGeM


def resize_for_scale(images, scale):
    """Bilinear resize of a (B, C, H, W) batch to [int(H*scale), int(W*scale)] (at least 1 pixel)."""
    height, width = images.shape[-2:]
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    if size == (height, width):
        return images  # bilinear interpolation to the same size is the identity
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


class SuperGlobalDescriptor(nn.Module):
    """Image batch (B, 3, H, W), normalised -> L2-normalised global descriptors (B, D).

    `input_norm` (model/backbone.py InputNorm, default CVNet's) records how the backbone wants its
    input normalised; the extraction loop reads it, the module itself never renormalises.
    `precision_plan` (model/precision.py PrecisionPlan, or None) names the modules that stay fp32
    under bf16/fp16; the extraction loop applies it, the module itself always runs as it is."""

    def __init__(self, backbone, scales, gemp=True, rgem=True, sgem=True,
                 gemp_p=4.6, rgem_p=2.5, rgem_size=5, input_norm=CVNET_INPUT, precision_plan=None):
        super().__init__()
        self.backbone = backbone
        self.input_norm = input_norm
        self.precision_plan = precision_plan
        self.scales = list(scales)
        self.gemp = GeMPlus(p=gemp_p, eps=1e-8) if gemp else None
        self.rgem = RegionalGeM(p=rgem_p, size=rgem_size) if rgem else None
        self.sgem = ScaleGeM() if sgem else None

    def forward_single_scale(self, images):
        fmap = self.backbone.forward_features(images)
        if self.rgem is not None:
            fmap = self.rgem(fmap)
        pooled = self.gemp(fmap) if self.gemp is not None else self.backbone.forward_pool(fmap)
        pooled = F.normalize(pooled.float(), p=2, dim=-1)
        return self.backbone.forward_head(pooled)

    def forward(self, images):
        per_scale = [self.forward_single_scale(resize_for_scale(images, s)).float() for s in self.scales]
        if self.sgem is not None:
            combined = self.sgem(per_scale)
        else:
            combined = torch.stack(per_scale, 0).mean(0)
        # The official pipeline normalises here and again after averaging over its (single) loader
        # scale; the second pass changes the last bits, so it is kept.
        return F.normalize(F.normalize(combined, p=2, dim=-1), p=2, dim=-1)
