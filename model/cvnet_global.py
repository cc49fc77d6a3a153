"""The CVNet-Global baseline descriptor (CVNet's own test protocol, without SuperGlobal's changes).

Per scale s of [0.7071, 1, 1.4142] (the image is resized in the loader, test/cvnet_images.py):
plain CVNet ResNet (no ReLU+, no stage-1 clamp) -> conv5 map -> GeM with the learned power
(``head.pool.p``) -> ``head.fc`` (no L2 before it) -> L2-normalise (CVNet's
``extract_global_descriptor``) -> L2-normalise again (its ``extract_feature`` loop; kept because the
second pass changes the last bits). Then the mean over scales, L2-normalised.

    backbone = build_cvnet_global(50); load_weights(backbone, "./weights", 50)
    X = extract_cvnet_global(backbone, paths, None, "cuda")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from errors import UserError
from model.resnet import ResNet
from test.cvnet_images import CVNET_SCALES, CVNetImages
from test.extract import _ErrorsAsValues, autocast_context


def build_cvnet_global(depth=50, reduction_dim=2048):
    """CVNet's plain ResNet (ReLU everywhere) with its global head, eval mode, untrained."""
    return ResNet(depth, reduction_dim, relup=False, stage1_quirk=False).eval()


def cvnet_single_scale(backbone, images):
    """(B, 3, H, W) normalised images -> (B, D) per-scale descriptors, L2-normalised twice."""
    pooled = backbone.head.pool(backbone(images))
    desc = backbone.head.fc(pooled).float()
    return F.normalize(F.normalize(desc, p=2, dim=1), p=2, dim=1)


def extract_cvnet_global(backbone, paths, bboxes=None, device="cpu", scales=CVNET_SCALES, num_workers=0,
                         precision="fp32", upscale="cubic", size_rule="opencv", desc="cvnet-global"):
    """CVNet-Global descriptors of the images ``paths`` (queries: one box per path): (n, D) float32.

    Images run one at a time (sizes differ), every scale separately, like the official loop.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    dataset = CVNetImages(paths, bboxes, scales, upscale, size_rule)
    if len(dataset) == 0:
        raise UserError(f"{desc}: no images to extract")
    loader = DataLoader(_ErrorsAsValues(dataset), batch_size=None, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
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
    return F.normalize(per_scale.mean(0), p=2, dim=1).numpy().astype("float32", copy=False)
