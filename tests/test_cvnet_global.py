"""CVNet-Global protocol against a step-by-step torch.nn.functional computation."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.cvnet_global import build_cvnet_global, extract_cvnet_global
from test.cvnet_images import cvnet_resize
from tests.synthetic import random_resnet, textured_image

MEAN = [0.406, 0.456, 0.485]
STD = [0.225, 0.224, 0.229]


def bn(x, s, name):
    return F.batch_norm(x, s[name + ".running_mean"], s[name + ".running_var"], s[name + ".weight"],
                        s[name + ".bias"], training=False, eps=1e-5)


def functional_resnet(x, s, depths=(3, 4, 6, 3)):
    """Plain pycls ResNet-50 from the state dict: ReLU everywhere, stride on the 3x3 conv."""
    x = F.relu(bn(F.conv2d(x, s["stem.conv.weight"], stride=2, padding=3), s, "stem.bn"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, depth in enumerate(depths, start=1):
        for block in range(1, depth + 1):
            p = f"s{stage}.b{block}."
            stride = 2 if (block == 1 and stage > 1) else 1
            shortcut = bn(F.conv2d(x, s[p + "proj.weight"], stride=stride), s, p + "bn") \
                if p + "proj.weight" in s else x
            y = F.relu(bn(F.conv2d(x, s[p + "f.a.weight"]), s, p + "f.a_bn"))
            y = F.relu(bn(F.conv2d(y, s[p + "f.b.weight"], stride=stride, padding=1), s, p + "f.b_bn"))
            y = bn(F.conv2d(y, s[p + "f.c.weight"]), s, p + "f.c_bn")
            x = F.relu(shortcut + y)
    return x


def reference(state, bgr, scales, upscale):
    descs = []
    for scale in scales:
        if scale < 1:
            im = cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        elif scale > 1:
            im = cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=upscale)
        else:
            im = bgr
        x = torch.from_numpy(im.astype(np.float32)).permute(2, 0, 1) / 255.0
        x = torch.stack([(x[c] - MEAN[c]) / STD[c] for c in range(3)]).unsqueeze(0).double()
        fmap = functional_resnet(x, state)
        p = state["head.pool.p"]
        pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        desc = F.linear(pooled, state["head.fc.weight"], state["head.fc.bias"])
        descs.append(desc[0] / desc[0].norm())
    mean = torch.stack(descs).mean(0)
    return (mean / mean.norm()).float().numpy()


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvnet")
    source = random_resnet(50, seed=2, reduction_dim=64)
    backbone = build_cvnet_global(50, 64)
    backbone.load_state_dict(source.state_dict())
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(41, 53), (64, 48), (37, 37)]):
        paths.append(str(root / f"{i}.png"))
        cv2.imwrite(paths[-1], textured_image(w, h, rng, i))
    return backbone, paths


def test_matches_functional_reference(model_and_images):
    backbone, paths = model_and_images
    state = {k: v.double() for k, v in backbone.state_dict().items()}
    boxes = [(2, 3, 39.7, 50), (0, 0, 64, 48), (5.5, 1, 30, 36.2)]
    got = extract_cvnet_global(backbone, paths, boxes, "cpu")
    for i, (path, box) in enumerate(zip(paths, boxes)):
        x1, y1, x2, y2 = (int(v) for v in box)
        crop = cv2.imread(path)[y1:y2, x1:x2]
        np.testing.assert_allclose(got[i], reference(state, crop, (0.7071, 1.0, 1.4142), cv2.INTER_CUBIC),
                                   atol=2e-5)
    assert got.dtype == np.float32 and got.shape == (3, 64)
    db = extract_cvnet_global(backbone, paths[:1], None, "cpu", upscale="linear")
    np.testing.assert_allclose(db[0], reference(state, cv2.imread(paths[0]), (0.7071, 1.0, 1.4142),
                                                cv2.INTER_LINEAR), atol=2e-5)


def test_resize_sizes_and_interpolation():
    im = np.random.default_rng(1).integers(0, 255, (53, 41, 3), dtype=np.uint8)
    assert cvnet_resize(im, 0.7071).shape[:2] == (37, 29)          # round(37.48), round(28.99)
    assert cvnet_resize(im, 0.7071, size_rule="floor").shape[:2] == (37, 28)
    assert cvnet_resize(im, 1.4142).shape[:2] == (75, 58)          # round(74.95), round(57.98)
    assert np.array_equal(cvnet_resize(im, 1.4142),
                          cv2.resize(im, (0, 0), fx=1.4142, fy=1.4142, interpolation=cv2.INTER_CUBIC))
    assert cvnet_resize(im, 1.0) is im
    tiny = im[:1, :1]
    assert cvnet_resize(tiny, 0.7071).shape[:2] == (1, 1)          # never 0 pixels


def test_not_superglobal_backbone():
    backbone = build_cvnet_global(50, 8)
    assert not any(type(m).__name__ == "ReLUPlus" for m in backbone.modules())
