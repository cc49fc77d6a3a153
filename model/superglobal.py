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

from config import scales_of
from model.efficientnet_lite import FEATURE_DIM as LITE0_DIM, EfficientNetLite0
from model.resnet import ResNet
from modules.coarse_retrieval import GeMPlus, RegionalGeM, ScaleGeM


def resize_for_scale(images, scale):
    """Bilinear resize of a (B, C, H, W) batch to [int(H*scale), int(W*scale)] (at least 1 pixel)."""
    height, width = images.shape[-2:]
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    if size == (height, width):
        return images  # bilinear interpolation to the same size is the identity
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


class SuperGlobalDescriptor(nn.Module):
    """Image batch (B, 3, H, W), normalised -> L2-normalised global descriptors (B, D)."""

    def __init__(self, backbone, scales, gemp=True, rgem=True, sgem=True,
                 gemp_p=4.6, rgem_p=2.5, rgem_size=5):
        super().__init__()
        self.backbone = backbone
        self.scales = list(scales)
        self.gemp = GeMPlus(p=gemp_p, eps=1e-8) if gemp else None
        self.rgem = RegionalGeM(p=rgem_p, size=rgem_size) if rgem else None
        self.sgem = ScaleGeM() if sgem else None

    def forward_single_scale(self, images):
        fmap = self.backbone(images)
        if self.rgem is not None:
            fmap = self.rgem(fmap)
        pooled = self.gemp(fmap) if self.gemp is not None else self.backbone.head.pool(fmap)
        pooled = F.normalize(pooled.float(), p=2, dim=-1)
        return self.backbone.head.fc(pooled)

    def forward(self, images):
        per_scale = [self.forward_single_scale(resize_for_scale(images, s)).float() for s in self.scales]
        if self.sgem is not None:
            combined = self.sgem(per_scale)
        else:
            combined = torch.stack(per_scale, 0).mean(0)
        # The official pipeline normalises here and again after averaging over its (single) loader
        # scale; the second pass changes the last bits, so it is kept.
        return F.normalize(F.normalize(combined, p=2, dim=-1), p=2, dim=-1)


def descriptor_dim(cfg):
    """Length of the global descriptor of cfg.MODEL.TYPE."""
    return LITE0_DIM if cfg.MODEL.TYPE == "EFFICIENTNET_LITE0" else cfg.MODEL.HEADS.REDUCTION_DIM


def build_backbone(cfg):
    """The backbone of cfg.MODEL.TYPE, untrained. A backbone returns its last feature map and has a
    `head` with `pool` (the pooling used without GeM+) and `fc` (applied to the L2-normalised pool)."""
    if cfg.MODEL.TYPE == "EFFICIENTNET_LITE0":
        return EfficientNetLite0(relup=cfg.SupG.relup, relup_alpha=cfg.SupG.relup_alpha)
    return ResNet(cfg.MODEL.DEPTH, cfg.MODEL.HEADS.REDUCTION_DIM, relup=cfg.SupG.relup,
                  relup_alpha=cfg.SupG.relup_alpha, stage1_quirk=cfg.SupG.relup_stage1_quirk)


def build_descriptor(cfg):
    """The descriptor network that `cfg` describes, in eval mode, with untrained weights."""
    backbone = build_backbone(cfg)
    descriptor = SuperGlobalDescriptor(backbone, scales_of(cfg.TEST.SCALE_LIST), cfg.SupG.gemp,
                                       cfg.SupG.rgem, cfg.SupG.sgem, cfg.SupG.gemp_p, cfg.SupG.rgem_p,
                                       cfg.SupG.rgem_size)
    return descriptor.eval()
