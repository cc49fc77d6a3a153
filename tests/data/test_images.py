"""Image loading / preprocessing: BGR order, exact float32 normalisation, int() crop, errors."""

import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from errors import UserError
from test.data.images import (
    MEAN_BGR,
    STD_BGR,
    RevisitopImages,
    crop_box,
    load_image,
    normalize,
    normalize_images,
    read_image,
)


def write_png(path, arr):
    """Minimal PNG encoder (independent of OpenCV): HxW gray, HxWx3 RGB or HxWx4 RGBA, uint8."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else {3: 2, 4: 6}[arr.shape[2]]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


def official_prepare(im_bgr_uint8):
    """Transcription of the official loader: astype float32, transpose, /255, per-channel loop."""
    mean, sd = [0.406, 0.456, 0.485], [0.225, 0.224, 0.229]
    im = im_bgr_uint8.astype(np.float32, copy=False)
    im = im.transpose([2, 0, 1])
    im = im / 255.0
    for i in range(im.shape[0]):
        im[i] = im[i] - mean[i]
        im[i] = im[i] / sd[i]
    return im


def rgb_test_image(h=10, w=12):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_bgr_order_and_normalisation(tmp_path):
    # one pixel, RGB = (51, 0, 255) written by our own PNG encoder
    path = write_png(tmp_path / "px.png", np.array([[[51, 0, 255]]], dtype=np.uint8))
    im = read_image(path)
    assert im.dtype == np.uint8 and im.shape == (1, 1, 3)
    assert im[0, 0].tolist() == [255, 0, 51]  # BGR
    x = load_image(path)
    assert x.dtype == np.float32 and x.shape == (3, 1, 1) and x.flags.c_contiguous
    # hand computation, channel order B, G, R
    assert x[0, 0, 0] == pytest.approx((255 / 255 - 0.406) / 0.225, abs=1e-6)  # 2.64
    assert x[1, 0, 0] == pytest.approx((0 / 255 - 0.456) / 0.224, abs=1e-6)  # -2.0357142857
    assert x[2, 0, 0] == pytest.approx((51 / 255 - 0.485) / 0.229, abs=1e-6)  # -1.2445414847
    # bit-exact float32 arithmetic, in the official order
    f32 = np.float32
    assert x[2, 0, 0] == (f32(51) / f32(255.0) - f32(0.485)) / f32(0.229)


def test_normalise_bit_exact_against_official(tmp_path):
    rgb = rgb_test_image()
    path = write_png(tmp_path / "im.png", rgb)
    x = load_image(path)
    assert np.array_equal(read_image(path), rgb[:, :, ::-1])
    assert np.array_equal(x, official_prepare(rgb[:, :, ::-1].copy()))


def test_crop_uses_int_truncation(tmp_path):
    rgb = rgb_test_image(10, 12)
    path = write_png(tmp_path / "im.png", rgb)
    bbx = [1.7, 2.2, 5.9, 7.99]  # -> rows 2:7, cols 1:5
    x = load_image(path, bbx)
    assert x.shape == (3, 5, 4)
    assert np.array_equal(x, official_prepare(rgb[2:7, 1:5, ::-1].copy()))
    assert np.array_equal(crop_box(read_image(path), bbx), rgb[2:7, 1:5, ::-1])


def test_box_outside_image(tmp_path):
    path = write_png(tmp_path / "im.png", rgb_test_image(10, 12))
    with pytest.raises(UserError) as ei:
        load_image(path, [20, 0, 30, 5])
    msg = str(ei.value)
    assert path in msg and "[20, 0, 30, 5]" in msg and "\n" not in msg
    with pytest.raises(UserError, match="negative"):
        load_image(path, [-2, 0, 5, 5])
    # a box that only partly overlaps is clipped by slicing, like the official code
    assert load_image(path, [8, 6, 100, 100]).shape == (3, 4, 4)


def test_grayscale_png_gives_three_identical_channels(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    im = read_image(write_png(tmp_path / "g.png", gray))
    assert im.shape == (4, 5, 3)
    for c in range(3):
        assert np.array_equal(im[:, :, c], gray)


def test_rgba_png_gives_three_channels(tmp_path):
    rgba = np.zeros((3, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[..., 3] = [[0, 255], [128, 255], [255, 7]]
    im = read_image(write_png(tmp_path / "a.png", rgba))
    assert im.shape == (3, 2, 3)
    assert np.array_equal(im, rgba[..., 2::-1])  # alpha dropped, BGR


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory"])
def test_unreadable_image(tmp_path, kind):
    path = tmp_path / "x.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("definitely not a jpeg\n")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(UserError) as ei:
        load_image(path)
    msg = str(ei.value)
    assert msg.startswith(f"cannot read image {path}: ") and "\n" not in msg


def make_files(tmp_path, n=5):
    paths, rgbs = [], []
    for i in range(n):
        rgb = rgb_test_image(8 + i, 9 + 2 * i)
        paths.append(write_png(tmp_path / f"im{i}.png", rgb))
        rgbs.append(rgb)
    return paths, rgbs


def test_dataset(tmp_path):
    paths, rgbs = make_files(tmp_path)
    db = RevisitopImages(paths)
    assert len(db) == 5
    i, t = db[3]
    assert i == 3 and isinstance(t, torch.Tensor) and t.dtype == torch.uint8  # normalised on the device
    assert tuple(t.shape) == (3, 11, 15)
    assert np.array_equal(t.numpy(), rgbs[3][:, :, ::-1].transpose(2, 0, 1))
    assert np.array_equal(normalize_images(t).numpy(), official_prepare(rgbs[3][:, :, ::-1].copy()))
    q = RevisitopImages(paths, bboxes=[[1.7, 2.2, 5.9, 7.99]] * 5)
    i, t = q[4]
    assert i == 4 and tuple(t.shape) == (3, 5, 4)
    assert np.array_equal(normalize_images(t).numpy(), normalize(rgbs[4][2:7, 1:5, ::-1]))
    clone = pickle.loads(pickle.dumps(q))
    assert torch.equal(clone[4][1], t)
    with pytest.raises(ValueError):
        RevisitopImages(paths, bboxes=[[0, 0, 1, 1]])


def test_dataloader_with_workers(tmp_path):
    paths, rgbs = make_files(tmp_path)
    loader = DataLoader(RevisitopImages(paths), batch_size=1, shuffle=False, num_workers=2)
    seen = []
    for idx, t in loader:
        i = int(idx[0])
        seen.append(i)
        assert np.array_equal(normalize_images(t[0]).numpy(), normalize(rgbs[i][:, :, ::-1]))
    assert seen == list(range(5))


def test_device_normalisation_is_bit_identical_to_the_numpy_loader():
    """Every uint8 value in every channel, batched: the torch path equals the official numpy one."""
    values = np.arange(256, dtype=np.uint8)
    im = np.stack([np.roll(values, k) for k in range(3)], axis=-1).reshape(16, 16, 3)  # HWC BGR
    expected = official_prepare(im.copy())
    batch = torch.from_numpy(np.ascontiguousarray(np.stack([im, im[::-1]]).transpose(0, 3, 1, 2)))
    out = normalize_images(batch, MEAN_BGR, STD_BGR)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    assert np.array_equal(out[0].numpy(), expected)
    assert np.array_equal(out[1].numpy(), official_prepare(im[::-1].copy()))
    # channels-last input gives the same values
    assert torch.equal(normalize_images(batch.contiguous(memory_format=torch.channels_last)), out)


def test_normalisation_takes_mean_and_std():
    px = torch.tensor([[[255]], [[0]], [[51]]], dtype=torch.uint8)
    out = normalize_images(px, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    f32 = np.float32
    assert out.flatten().tolist() == [(f32(1) - f32(0.5)) / f32(0.25), (f32(0) - f32(0.5)) / f32(0.5),
                                      f32(f32(51) / f32(255)) - f32(0.5)]


def test_require_images_names_the_first_missing(tmp_path):
    from test.data.images import require_images

    present = tmp_path / "a.jpg"
    present.write_bytes(b"x")
    require_images([present], "roxford5k")
    with pytest.raises(UserError) as error:
        require_images([present, tmp_path / "b.jpg", tmp_path / "c.jpg"], "roxford5k")
    assert "2 of 3 roxford5k images are missing" in str(error.value) and "b.jpg" in str(error.value)
