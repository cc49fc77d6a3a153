"""Batched extraction gives the batch-1 features, in dataset order, and errors cross workers intact."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from config import get_cfg_defaults
from errors import UserError
from test.build import build_descriptor
from test.data.images import RevisitopImages
from test.data.synthetic import random_resnet, stand_in_sizes, textured_image
from test.extraction.extract import _Buckets, extract_features
from test.extraction.runtime import ExtractOptions


class SizedImages(torch.utils.data.Dataset):
    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.images = [torch.from_numpy(textured_image(w, h, rng, i).transpose(2, 0, 1).astype(np.float32) / 255)
                       for i, (w, h) in enumerate(sizes)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return index, self.images[index]


def test_buckets_release_every_image_once_in_same_size_groups():
    rng = np.random.default_rng(0)
    sizes = [tuple(s) for s in rng.choice([(4, 3), (3, 4), (5, 5), (2, 7), (9, 1)], size=200)]
    buckets = _Buckets(batch_size=4, max_waiting=10)
    released = []
    for index, size in enumerate(sizes):
        for group in buckets.add(index, torch.zeros(3, *size)):
            released.append(group)
        assert buckets.waiting <= 10
    released.extend(buckets.drain())
    indices = [i for group in released for i, _ in group]
    assert sorted(indices) == list(range(200))
    for group in released:
        assert 1 <= len(group) <= 4
        assert len({tuple(image.shape) for _, image in group}) == 1


@pytest.fixture(scope="module")
def descriptor():
    cfg = get_cfg_defaults()
    model = build_descriptor(cfg)
    model.backbone.load_state_dict(random_resnet(50, seed=7).state_dict())
    return model


def test_batched_equals_batch_one(descriptor):
    sizes = stand_in_sizes(10, divisor=16, seed=3)
    sizes[4] = (37, 29)  # a size of its own runs alone
    data = SizedImages(sizes)
    one = extract_features(descriptor, data, "cpu", batch_size=1, num_workers=0)
    many = extract_features(descriptor, data, "cpu", batch_size=4, num_workers=0)
    assert one.shape == (10, 2048) and one.dtype == np.float32
    np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        direct = np.stack([descriptor(data[i][1][None])[0].numpy() for i in range(10)])
    np.testing.assert_allclose(one, direct, rtol=1e-5, atol=1e-6)  # row i is image i


def test_user_error_in_worker_keeps_its_one_line_message(descriptor, tmp_path):
    missing = tmp_path / "jpg" / "gone.jpg"
    with pytest.raises(UserError) as error:
        extract_features(descriptor, RevisitopImages([missing]), "cpu", num_workers=1)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


def test_fp16_on_cpu_is_refused(descriptor):
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        extract_features(descriptor, SizedImages([(20, 20)]), "cpu", precision="fp16", num_workers=0)


def test_bf16_stays_close_to_fp32(descriptor):
    data = SizedImages(stand_in_sizes(2, divisor=16, seed=4))
    fp32 = extract_features(descriptor, data, "cpu", num_workers=0)
    bf16 = extract_features(descriptor, data, "cpu", precision="bf16", num_workers=0)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(bf16, axis=1)
    assert (cosine > 0.95).all()


def write_images(folder, sizes, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"im{i}.png"
        cv2.imwrite(str(path), textured_image(w, h, rng, i)[:, :, ::-1])
        paths.append(path)
    return paths


PLAIN = ExtractOptions(batch_size=1, num_workers=0, fold_bn="off", channels_last="off", pin_memory="off",
                       non_blocking="off", uint8_transfer="off")


def test_every_cuda_branch_switched_on_on_cpu_gives_the_plain_features(descriptor, tmp_path):
    sizes = stand_in_sizes(3, divisor=16, seed=5)
    images = RevisitopImages(write_images(tmp_path, sizes + sizes[:2]))  # two sizes batch up
    plain = extract_features(descriptor, images, "cpu", options=PLAIN)
    # uint8 transfer alone: the device normalisation is bit-identical to the loader's
    uint8 = extract_features(descriptor, images, "cpu", options=replace(PLAIN, uint8_transfer="on"))
    assert np.array_equal(uint8, plain)
    everything = ExtractOptions(batch_size=2, num_workers=1, num_threads=2, fold_bn="on", channels_last="on",
                                pin_memory="on", non_blocking="on", uint8_transfer="on")
    fast = extract_features(descriptor, images, "cpu", options=everything)
    assert fast.shape == plain.shape
    assert ((fast * plain).sum(1) >= 1 - 1e-5).all()
    np.testing.assert_array_equal(np.argsort(-(fast @ fast[:2].T), 0), np.argsort(-(plain @ plain[:2].T), 0))
    # the defaults are the fast path; the caller's module keeps its BatchNorms and parameter names
    assert ((extract_features(descriptor, images, "cpu") * plain).sum(1) >= 1 - 1e-5).all()
    assert "backbone.stem.bn.running_mean" in descriptor.state_dict()
