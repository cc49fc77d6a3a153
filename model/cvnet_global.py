"""The CVNet-Global baseline descriptor (CVNet's own test protocol, without SuperGlobal's changes).

Per scale s of [0.7071, 1, 1.4142] (the uint8 image is resized by cv2 in the loader,
test/extraction/cvnet_global_loop.py): plain CVNet ResNet (no ReLU+, no stage-1 clamp) -> conv5 map -> GeM with the
learned power (``head.pool.p``) -> ``head.fc`` (no L2 before it) -> L2-normalise (CVNet's
``extract_global_descriptor``) -> L2-normalise again (its ``extract_feature`` loop). Then the mean
over scales, L2-normalised (``combine_scales``). The extraction loop is test/extraction/cvnet_global_loop.py.
"""

import torch
import torch.nn.functional as F

from model.resnet import ResNet


def build_cvnet_global(depth=50, reduction_dim=2048):
    """CVNet's plain ResNet (ReLU everywhere) with its global head, eval mode, untrained."""
    return ResNet(depth, reduction_dim, relup=False, stage1_quirk=False).eval()


def cvnet_single_scale(backbone, images):
    """(B, 3, H, W) normalised images -> (B, D) per-scale descriptors, L2-normalised twice."""
    pooled = backbone.head.pool(backbone(images))
    desc = backbone.head.fc(pooled).float()
    return F.normalize(F.normalize(desc, p=2, dim=1), p=2, dim=1)


def combine_scales(per_scale):
    """(S, n, D) per-scale descriptors -> (n, D): their mean, L2-normalised."""
    return F.normalize(torch.as_tensor(per_scale).mean(0), p=2, dim=1)
