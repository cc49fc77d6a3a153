"""Extraction loop of the CVNet-Global baseline: one image at a time, every scale separately, like
CVNet's ``test/test_utils.py`` ``extract_feature`` (DataLoader batch size 1).

    backbone = build_cvnet_global(50); load_weights(backbone, "./weights", 50)
    X = extract_cvnet_global(backbone, paths, None, "cuda")
"""

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from errors import UserError
from model.cvnet_global import combine_scales, cvnet_single_scale
from test.cvnet_images import CVNET_SCALES, CVNetImages
from test.extract import _ErrorsAsValues, autocast_context
from test.runtime import quiet_worker


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
