"""CVNet checkpoints load completely, with any known prefix, and every bad file stops cleanly."""


import pytest
import torch

from errors import UserError
from model.checkpoint import load_weights, strip_prefixes
from model.resnet import ResNet
from test.data.synthetic import random_resnet, write_checkpoint
from tests.payloads import MkdirPayload


@pytest.fixture(scope="module")
def r50():
    return random_resnet(50, seed=1)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("prefix", ["encoder_q.", "globalmodel.", "module.", "module.encoder_q.", ""])
@pytest.mark.parametrize("wrapped", [True, False])
def test_loads_every_prefix(tmp_path, r50, prefix, wrapped):
    path = tmp_path / "w.pyth"
    write_checkpoint(path, r50, prefix=prefix, wrapped=wrapped)
    fresh = ResNet(50)
    load_weights(fresh, path)
    assert_same_weights(fresh, r50)


def test_directory_with_official_file_name(tmp_path, r50):
    write_checkpoint(tmp_path / "CVPR2022_CVNet_R50.pyth", r50)
    fresh = ResNet(50)
    assert load_weights(fresh, tmp_path).name == "CVPR2022_CVNet_R50.pyth"
    assert_same_weights(fresh, r50)


def test_encoder_q_wins_over_other_branches(tmp_path, r50):
    state = {"encoder_q." + k: v for k, v in r50.state_dict().items()}
    state.update({"globalmodel." + k: torch.zeros_like(v) for k, v in r50.state_dict().items()})
    assert torch.equal(strip_prefixes(state)["stem.conv.weight"], r50.stem.conv.weight)


def error_for(weights, depth=50):
    with pytest.raises(UserError) as error:
        load_weights(ResNet(depth), weights)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_r101_weights_with_depth_50(tmp_path):
    path = tmp_path / "r101.pyth"
    write_checkpoint(path, ResNet(101))
    assert "look like ResNet-101 but MODEL.DEPTH is 50" in error_for(path, 50)


def test_r50_weights_with_depth_101(tmp_path, r50):
    path = tmp_path / "r50.pyth"
    write_checkpoint(path, r50)
    assert "look like ResNet-50 but MODEL.DEPTH is 101" in error_for(path, 101)


def test_truncated_file(tmp_path, r50):
    path = tmp_path / "w.pyth"
    write_checkpoint(path, r50)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    message = error_for(path)
    assert str(path) in message and "truncated" in message


def test_zero_byte_and_not_a_checkpoint(tmp_path):
    empty, text = tmp_path / "empty.pyth", tmp_path / "notes.pyth"
    empty.write_bytes(b"")
    text.write_text("these are not weights\n")
    assert "empty" in error_for(empty) and str(empty) in error_for(empty)
    assert str(text) in error_for(text)


def test_missing_path_and_directory_without_file(tmp_path):
    assert "weights not found" in error_for(tmp_path / "nowhere.pyth")
    (tmp_path / "other.pth").write_bytes(b"x")
    message = error_for(tmp_path)
    assert "CVPR2022_CVNet_R50.pyth" in message and "other.pth" in message


def test_code_in_pickle_is_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {"x": torch.zeros(1)}, "extra": MkdirPayload(str(marker))}, path)
    assert not marker.exists()
    message = error_for(path)
    assert "refusing" in message and str(path) in message
    assert not marker.exists()


def test_missing_tensors_are_counted(tmp_path, r50):
    state = {"encoder_q." + k: v for k, v in r50.state_dict().items() if not k.startswith("s4.b3.")}
    path = tmp_path / "partial.pyth"
    torch.save({"model_state": state}, path)
    message = error_for(path)
    assert "tensors missing" in message and "s4.b3." in message


def test_other_head_size_is_reported(tmp_path, r50):
    path = tmp_path / "w.pyth"
    write_checkpoint(path, r50)
    with pytest.raises(UserError, match="head.fc.weight"):
        load_weights(ResNet(50, reduction_dim=512), path)


def test_nan_weights_are_refused(tmp_path, r50):
    broken = random_resnet(50, seed=2)
    with torch.no_grad():
        broken.s2.b1.f.a.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pyth"
    write_checkpoint(path, broken)
    assert "NaN" in error_for(path)


@pytest.mark.parametrize("value, kind", [
    (torch.zeros(64, 3, 7, 7, dtype=torch.int64), "torch.int64 tensor"),
    (torch.zeros(64, 3, 7, 7, dtype=torch.bool), "torch.bool tensor"),
    ("weights", "a str"),
    ([[0.0]], "a list"),
], ids=["int64", "bool", "str", "list"])
def test_non_float_entry_is_refused_before_any_cast(tmp_path, r50, value, kind):
    state = dict(r50.state_dict())
    state["stem.conv.weight"] = value
    path = tmp_path / "w.pyth"
    torch.save(state, path)
    message = error_for(path)
    assert "stem.conv.weight" in message and kind in message and str(path) in message
