"""Faults: database / query images, through `python test.py`.

Unreadable images stop the run naming the file (exit 2, no traceback): a missing one before any
work (nothing written), a damaged one when extraction reaches it (the log then holds the run's
header but no result line, so it is never mistaken for a finished run). Unusual but valid images
(PNG, grayscale, CMYK, 16-bit, alpha, 1x1, 16x16, EXIF-rotated) work and read exactly as
cv2.imread's default flag reads them, as the official loader does.

10000x10000: decoding is cheap (0.7 s, 300 MB) and normalising to float32 takes ~11 s and ~4 GB
peak RSS on the 2-core CI machine; the ResNet forward at 1e8 pixels would need tens of GB of
activations and minutes to hours on a CPU, so the test decodes a 10000x10000 JPEG through
read_image (the step that could refuse it) and stops there (measurements: docs/errors.md).
R1M distractor images are covered by tests/r1m/test_extract_rop1m.py (failed images get zero rows and
are listed in the sidecar).
"""

import os
import pickle
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest

from test.data.images import read_image
from test.data.synthetic import textured_image
from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "faults_images_ws")


def private_data(ws, tmp_path):
    """A DATA_DIR of symlinks to the shared dataset; returns (data_dir, jpg folder, gnd)."""
    root, gnd = ws
    data = tmp_path / "revisitop" / "roxford5k"
    (data / "jpg").mkdir(parents=True)
    for image in (root / "revisitop" / "roxford5k").rglob("*.*"):
        (data / image.relative_to(root / "revisitop" / "roxford5k")).symlink_to(image)
    return tmp_path / "revisitop", data / "jpg", gnd


def jpeg_bytes(width=40, height=30, seed=0):
    ok, encoded = cv2.imencode(".jpg", textured_image(width, height, np.random.default_rng(seed), 1))
    return encoded.tobytes()


# --------------------------------------------------------------------------- refused images

BAD = {  # case: (which split, how, error fragments, stops before any work?)
    "db_missing": ("db", "missing", ["1 of 8 roxford5k images are missing"], True),
    "query_missing": ("query", "missing", ["1 of 8 roxford5k images are missing"], True),
    "db_directory": ("db", "directory", ["1 of 8 roxford5k images are missing"], True),
    "db_zero_bytes": ("db", "empty", ["file is empty (0 bytes)"], False),
    "db_truncated_jpeg": ("db", "truncated", ["truncated JPEG"], False),
    "query_truncated_jpeg": ("query", "truncated", ["truncated JPEG"], False),
    "db_not_an_image": ("db", "text", ["OpenCV could not decode it"], False),
    "query_not_an_image": ("query", "text", ["OpenCV could not decode it"], False),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_stops_naming_the_file(ws, tmp_path, entry, case):
    split, how, fragments, preflight = BAD[case]
    data_dir, jpg, gnd = private_data(ws, tmp_path)
    name = gnd["imlist"][3] if split == "db" else gnd["qimlist"][1]
    path = jpg / f"{name}.jpg"
    original = path.read_bytes()
    path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(original[:len(original) * 2 // 3])
    elif how == "text":
        path.write_text("definitely not a jpeg\n")
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws[0], out=out), "TEST.DATA_DIR", data_dir, cwd=tmp_path,
                 subprocess=case in ("db_missing", "db_truncated_jpeg"))
    error_line(done, path, *fragments, preflight=preflight)
    assert "Premature end of JPEG" not in done.stderr  # refused before OpenCV half-decodes it
    if preflight:
        assert_nothing_written(out)
    else:
        assert "Retrieval results" not in (out / "log.txt").read_text()
        assert not (out / "roxford5k.npz").exists()
        cached = [p.name for p in (out / "feature_cache").glob("*.npy")] if (out / "feature_cache").exists() else []
        if split == "query":
            assert cached == []  # nothing of the split that failed is kept
        else:
            assert [n.split("-")[0] for n in cached] == ["roxford5k_queries"]


# --------------------------------------------------------------------------- images that must work

def exif_rotated_jpeg(orientation=6):
    """A 24x16 JPEG carrying an EXIF APP1 segment with the given Orientation tag."""
    jpeg = jpeg_bytes(24, 16, seed=3)
    ifd = (b"\x00\x01" + b"\x01\x12" + b"\x00\x03" + b"\x00\x00\x00\x01"
           + orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00")
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + app1 + jpeg[2:]


def write_variant(path, kind):
    """Write image `kind` to `path` (named .jpg: cv2 goes by content); returns what cv2 should give
    (a check on the decoded BGR array) beside cv2.imread's own default read."""
    rng = np.random.default_rng(5)
    if kind == "png":
        rgb = textured_image(30, 20, rng, 2)
        cv2.imwrite(str(path.with_suffix(".png")), rgb)
        shutil.move(path.with_suffix(".png"), path)
        return lambda im: np.array_equal(im, rgb)
    if kind == "grayscale_jpeg":
        gray = cv2.cvtColor(textured_image(30, 20, rng, 2), cv2.COLOR_BGR2GRAY)
        path.write_bytes(cv2.imencode(".jpg", gray)[1].tobytes())
        return lambda im: (im.shape == (20, 30, 3) and (im[..., 0] == im[..., 1]).all()
                           and (im[..., 1] == im[..., 2]).all())
    if kind == "cmyk_jpeg":
        from PIL import Image
        cmyk = Image.fromarray(textured_image(30, 20, rng, 2)[..., ::-1]).convert("CMYK")
        cmyk.save(path, "JPEG", quality=95)
        assert Image.open(path).mode == "CMYK"
        return lambda im: im.shape == (20, 30, 3) and im.std() > 5
    if kind == "png16":
        deep = (rng.random((20, 30, 3)) * 65535).astype(np.uint16)
        path.write_bytes(cv2.imencode(".png", deep)[1].tobytes())
        return lambda im: im.dtype == np.uint8 and np.abs(im.astype(int) - (deep >> 8)).max() <= 1
    if kind == "alpha_png":
        bgra = np.dstack([textured_image(30, 20, rng, 2), rng.integers(0, 256, (20, 30), dtype=np.uint8)])
        path.write_bytes(cv2.imencode(".png", bgra)[1].tobytes())
        return lambda im: np.array_equal(im, bgra[..., :3])
    if kind in ("1x1", "16x16"):
        side = 1 if kind == "1x1" else 16
        bgr = np.full((side, side, 3), (10, 120, 240), np.uint8)
        path.write_bytes(cv2.imencode(".png", bgr)[1].tobytes())
        return lambda im: np.array_equal(im, bgr)
    if kind == "exif_rotated":
        path.write_bytes(exif_rotated_jpeg(6))
        stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert stored.shape[:2] == (16, 24)
        return lambda im: im.shape == (24, 16, 3) and np.array_equal(im, np.rot90(stored, k=-1))
    raise AssertionError(kind)


VARIANTS = ["png", "grayscale_jpeg", "cmyk_jpeg", "png16", "alpha_png", "1x1", "16x16", "exif_rotated"]


@pytest.mark.parametrize("kind", VARIANTS)
def test_valid_variants_read_as_cv2_imread_default(tmp_path, kind):
    path = tmp_path / "im.jpg"
    expected = write_variant(path, kind)
    im = read_image(path)
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    assert np.array_equal(im, cv2.imread(str(path)))
    assert expected(im)


def test_database_of_unusual_images_runs(ws, tmp_path, entry):
    """Every variant in one database (and a PNG query): the run completes, features are unit-norm."""
    data_dir, jpg, gnd = private_data(ws, tmp_path)
    names = [f"extra_{kind}" for kind in VARIANTS]
    for name, kind in zip(names, VARIANTS):
        write_variant(jpg / f"{name}.jpg", kind)
    raw = {"imlist": gnd["imlist"] + names, "qimlist": gnd["qimlist"],
           "gnd": [dict(g) for g in gnd["gnd"]]}
    query = jpg / f"{gnd['qimlist'][0]}.jpg"
    query.unlink()
    write_variant(query, "png")  # 30x20; its box is cropped by int() like any other
    gnd_path = data_dir / "roxford5k" / "gnd_roxford5k.pkl"
    gnd_path.unlink()
    gnd_path.write_bytes(pickle.dumps(raw))
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws[0], out=out), "TEST.DATA_DIR", data_dir, "TEST.SAVE_FEATURES", "True",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(out / "roxford5k.npz")
    assert saved["X"].shape == (len(raw["imlist"]), 2048) and np.isfinite(saved["X"]).all()
    np.testing.assert_allclose(np.linalg.norm(saved["X"], axis=1), 1, rtol=1e-5)


def test_10000x10000_decodes(tmp_path):
    """Proxy for the 10000x10000 case (see the module docstring): read_image accepts it."""
    big = np.zeros((10000, 10000, 3), np.uint8)
    big[5000:, :, 2] = 255
    path = tmp_path / "big.jpg"
    assert cv2.imwrite(str(path), big)
    del big
    im = read_image(path)
    assert im.shape == (10000, 10000, 3)
    assert im[0, 0].tolist() == [0, 0, 0] and abs(int(im[-1, -1, 2]) - 255) <= 2


def test_an_image_name_that_is_not_utf8_is_refused_before_any_work(ws, tmp_path, entry):
    """OpenCV crashes (segmentation fault) on such a name: the run names it and stops first."""
    from test.data.synthetic import write_custom_folder

    root, _ = ws
    folder = write_custom_folder(tmp_path / "shop")
    os.rename(folder / "db" / "1.jpg", os.fsdecode(os.fsencode(folder / "db") + b"/caf\xe9.jpg"))
    out = tmp_path / "out"
    done = entry("test.py", "TEST.WEIGHTS", root / "weights", "TEST.DATASET_LIST", f"custom:{folder}",
                 "OUT_DIR", out, "TEST.SCALE_LIST", "1", cwd=tmp_path)
    error_line(done, "1 of 5 shop images have names that are not valid UTF-8", "caf\\udce9.jpg", "rename them")
    assert_nothing_written(out)


def big_png(width, height):
    """A PNG whose header claims width x height pixels (the data is tiny)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_image_header_beyond_opencvs_pixel_limit_gives_one_line(tmp_path_factory, tmp_path, entry):
    root, gnd = roxford_workspace(tmp_path_factory, "bigheader")
    path = root / "revisitop" / "roxford5k" / "jpg" / f"{gnd['imlist'][1]}.jpg"
    path.write_bytes(big_png(60000, 60000))  # cv2.imread reads by content, not by extension
    done = entry("test.py", *base_args(root, out=tmp_path / "out"), cwd=tmp_path)
    error_line(done, path.name, "more pixels than OpenCV allows", preflight=False)
