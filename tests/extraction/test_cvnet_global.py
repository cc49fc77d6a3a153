"""CVNet-Global protocol against an independent transcription of CVNet's official code.

The facts (sungonce/CVNet test/dataset.py DataSet.__getitem__ and test/test_utils.py extract_feature):
cv2.imread; queries cropped im[int(y1):int(y2), int(x1):int(x2)]; per scale: 1.0 as it is, < 1
cv2.resize(dsize=(0,0), fx, fy, INTER_AREA), > 1 the same with INTER_LINEAR; astype float32, HWC->CHW,
/255, per channel (x - mean) / sd (BGR); per scale ResNet -> learned GeM -> head.fc -> L2 -> L2; stacked,
mean over scales, L2. The reference below is written from those facts with torch.nn.functional only.
"""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.cvnet_global import build_cvnet_global
from test.data.synthetic import random_resnet, real_sizes, textured_image
from test.extraction.cvnet_global_loop import CVNetImages, cvnet_resize, extract_cvnet_global

MEAN = [0.406, 0.456, 0.485]
SD = [0.225, 0.224, 0.229]
SCALES = [0.7071, 1.0, 1.4142]


def official_item(path, bbx, scales=SCALES):
    """DataSet.__getitem__, transcribed: list of (1, 3, h, w) float32 tensors, one per scale."""
    im = cv2.imread(path)
    if bbx is not None:
        im = im[int(bbx[1]):int(bbx[3]), int(bbx[0]):int(bbx[2])]
    out = []
    for scale in scales:
        if scale == 1.0:
            im_np = im.astype(np.float32, copy=True)
        elif scale < 1.0:
            im_np = cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)
        else:
            im_np = cv2.resize(im, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        chw = im_np.transpose([2, 0, 1]) / 255.0
        for c in range(chw.shape[0]):
            chw[c] = chw[c] - MEAN[c]
            chw[c] = chw[c] / SD[c]
        out.append(torch.from_numpy(np.ascontiguousarray(chw)).unsqueeze(0))
    return out


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


def official_extract(state, paths, bboxes):
    """extract_feature, transcribed: per image, per scale, global descriptor L2 twice; mean; L2."""
    rows = []
    for i, path in enumerate(paths):
        descs = []
        for image in official_item(path, None if bboxes is None else bboxes[i]):
            fmap = functional_resnet(image.to(state["stem.conv.weight"].dtype), state)
            p = state["head.pool.p"]
            pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
            desc = F.normalize(F.linear(pooled, state["head.fc.weight"], state["head.fc.bias"]), dim=1)
            descs.append(F.normalize(desc, dim=1))
        rows.append(F.normalize(torch.cat(descs).mean(0, keepdim=True), dim=1))
    return torch.cat(rows).float().numpy()


def real_size_images(folder, count, seed=0):
    """`count` photos-like images at the first real ROxford database sizes (1024x768 when absent)."""
    sizes = (real_sizes() or [(1024, 768)] * count)[:count]
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(str(folder / f"{i}.jpg"))
        cv2.imwrite(paths[-1], textured_image(w, h, rng, i))
    return paths


def test_loader_equals_official_getitem_at_real_size(tmp_path):
    """Output sizes, interpolation per scale and normalisation order, bit for bit, on a real-size
    image and a crop with fractional box coordinates."""
    paths = real_size_images(tmp_path, 1)
    h, w = cv2.imread(paths[0]).shape[:2]
    box = (101.7, 55.2, w - 33.4, h - 20.9)
    for bboxes in (None, [box]):
        _, ours = CVNetImages(paths, bboxes)[0]
        theirs = official_item(paths[0], None if bboxes is None else box)
        for scale, a, b in zip(SCALES, ours, theirs):
            assert torch.equal(a, b[0]), scale
    crop_h, crop_w = int(box[3]) - int(box[1]), int(box[2]) - int(box[0])
    _, crop = CVNetImages(paths, [box])[0]
    assert [tuple(t.shape[1:]) for t in crop] == [(round(crop_h * s), round(crop_w * s)) for s in SCALES]


def test_upscale_is_inter_linear_by_default():
    im = np.random.default_rng(1).integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    up = cvnet_resize(im, 1.4142)
    assert up.shape[:2] == (1086, 1448)                              # round(1086.1), round(1448.1)
    assert np.array_equal(up, cv2.resize(im, (0, 0), fx=1.4142, fy=1.4142, interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(up, cv2.resize(im, (0, 0), fx=1.4142, fy=1.4142, interpolation=cv2.INTER_CUBIC))
    down = cvnet_resize(im, 0.7071)
    assert np.array_equal(down, cv2.resize(im, (0, 0), fx=0.7071, fy=0.7071, interpolation=cv2.INTER_AREA))
    assert cvnet_resize(im, 1.0) is im
    assert cvnet_resize(im[:1, :1], 0.7071).shape[:2] == (1, 1)       # never 0 pixels


def test_config_default_is_cvnets_linear():
    from config import get_cfg_defaults
    assert get_cfg_defaults().TEST.CVNET_UPSCALE == "linear"


@pytest.fixture(scope="module")
def backbone():
    source = random_resnet(50, seed=2, reduction_dim=64)
    model = build_cvnet_global(50, 64)
    model.load_state_dict(source.state_dict())
    return model


def test_descriptors_equal_official_transcription_at_real_size(backbone, tmp_path):
    """Default settings vs the transcription: cosine >= 0.99999 and identical global ranks."""
    paths = real_size_images(tmp_path, 3)
    h, w = cv2.imread(paths[0]).shape[:2]
    boxes = [(120.4, 80.6, w - 200.2, h - 150.9), (10.0, 300.5, w / 2 + 0.7, h - 1.2)]
    queries = [paths[0], paths[1]]
    state = dict(backbone.state_dict())
    ours_q = extract_cvnet_global(backbone, queries, boxes, "cpu")
    ours_x = extract_cvnet_global(backbone, paths, None, "cpu")
    ref_q, ref_x = official_extract(state, queries, boxes), official_extract(state, paths, None)
    cosines = np.concatenate([(ours_q * ref_q).sum(1), (ours_x * ref_x).sum(1)])
    assert cosines.min() >= 0.99999, cosines
    assert np.array_equal(np.argsort(-(ours_x @ ours_q.T), axis=0, kind="stable"),
                          np.argsort(-(ref_x @ ref_q.T), axis=0, kind="stable"))


def test_not_superglobal_backbone():
    model = build_cvnet_global(50, 8)
    assert not any(type(m).__name__ == "ReLUPlus" for m in model.modules())
