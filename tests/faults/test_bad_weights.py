"""Faults: bad TEST.WEIGHTS, through `python test.py` as a user runs it.

Unit-level variants of most cases are in tests/model/test_checkpoint.py; here every case goes through the
entry point: exit 2, one `error:` line naming the file, no traceback, and nothing written to OUT_DIR
(log.txt may exist empty: test.py creates it first to check OUT_DIR is writable, and writes its
header only once the weights have loaded, so a refused checkpoint leaves no log lines).
"""

import pickle

import pytest
import torch

from model.resnet import ResNet
from tests.entry_points import (
    WEIGHTS_NAME,
    assert_nothing_written,
    base_args,
    error_line,
    make_workspace,
    shared_weights,
)
from tests.payloads import MkdirPayload


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_weights_ws")
    make_workspace(root, tmp_path_factory)
    return root


def r101_like(path):
    """A checkpoint with the R101 key names and shapes but one shared zero per tensor (a few KB
    instead of 170 MB): enough for the depth check, which looks at the keys."""
    state = {"encoder_q." + k: torch.zeros(()).expand(v.shape) for k, v in ResNet(101).state_dict().items()}
    torch.save({"model_state": state}, path)


def make_weights(case, tmp_path, marker, real):
    """(TEST.WEIGHTS value, MODEL.DEPTH, fragments the error must contain)."""
    if case == "missing":
        return tmp_path / "nowhere.pyth", 50, ["weights not found", tmp_path / "nowhere.pyth", "TEST.WEIGHTS"]
    if case == "dir_without_file":
        folder = tmp_path / "wdir"
        folder.mkdir()
        (folder / "CVPR2022_CVNet_R101.pyth").write_bytes(b"x")
        return folder, 50, [f"no {WEIGHTS_NAME} in {folder}", "CVPR2022_CVNet_R101.pyth"]
    if case == "truncated":
        path = tmp_path / "cut.pyth"
        with open(real, "rb") as src:
            path.write_bytes(src.read(real.stat().st_size // 3))
        return path, 50, [path, "truncated"]
    if case == "zero_bytes":
        path = tmp_path / "empty.pyth"
        path.write_bytes(b"")
        return path, 50, [path, "empty"]
    if case == "not_a_checkpoint":
        path = tmp_path / "notes.pyth"
        path.write_text("these are not weights\n")
        return path, 50, [path, "not a PyTorch checkpoint"]
    if case == "tensor_not_state_dict":
        path = tmp_path / "tensor.pyth"
        torch.save(torch.zeros(3), path)
        return path, 50, [path, "holds no state dict"]
    if case == "r101_as_depth_50":
        path = tmp_path / "r101.pyth"
        r101_like(path)
        return path, 50, [path, "look like ResNet-101 but MODEL.DEPTH is 50", "MODEL.DEPTH 101"]
    if case == "r50_as_depth_101":
        return real, 101, [real, "look like ResNet-50 but MODEL.DEPTH is 101", "MODEL.DEPTH 50"]
    if case == "torch_payload":  # a torch.save zip whose pickle would call os.mkdir
        path = tmp_path / "evil.pyth"
        torch.save({"model_state": {"x": torch.zeros(1)}, "extra": MkdirPayload(str(marker))}, path)
        return path, 50, [path, "refusing"]
    if case == "plain_pickle_payload":  # not even a torch file: a bare pickle
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"model_state": MkdirPayload(str(marker))}))
        return path, 50, [path, "refusing"]
    raise AssertionError(case)


CASES = ["missing", "dir_without_file", "truncated", "zero_bytes", "not_a_checkpoint", "tensor_not_state_dict",
         "r101_as_depth_50", "r50_as_depth_101", "torch_payload", "plain_pickle_payload"]
SUBPROCESS_CASES = {"missing", "torch_payload"}  # the others run main() in-process (tests/entry_points.py)


@pytest.mark.parametrize("case", CASES)
def test_bad_weights_stop_with_one_line(ws, tmp_path, tmp_path_factory, entry, case):
    marker = tmp_path / "payload_ran"
    weights, depth, fragments = make_weights(case, tmp_path, marker, shared_weights(tmp_path_factory))
    assert not marker.exists()
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws, out=out), "TEST.WEIGHTS", weights, "MODEL.DEPTH", depth, cwd=tmp_path,
                 subprocess=case in SUBPROCESS_CASES)
    error_line(done, *fragments)
    assert not marker.exists(), "unpickling ran the payload"
    assert_nothing_written(out)


@pytest.mark.parametrize("prefix", ["module."])
def test_other_key_prefix_loads(ws, tmp_path, tmp_path_factory, entry, prefix):
    state = torch.load(shared_weights(tmp_path_factory), map_location="cpu", weights_only=True)["model_state"]
    renamed = {(prefix + k[len("encoder_q."):] if k.startswith("encoder_q.") else k): v for k, v in state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)  # a bare state dict, too
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws, out=out), "TEST.WEIGHTS", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (out / "log.txt").read_text()
    assert f"weights={path}" in log and log.count("Retrieval results: mAP E: ") == 1


def r50_like(path, key, value):
    """An R50-shaped checkpoint (one shared zero per tensor, a few KB) whose `key` holds `value`."""
    state = {"encoder_q." + k: torch.zeros((), dtype=v.dtype).expand(v.shape)
             for k, v in ResNet(50).state_dict().items()}
    state["encoder_q." + key] = value
    torch.save({"model_state": state}, path)


# (case, key, value, how the error describes the value): a weight that is not a floating-point
# tensor is refused naming the key, never cast (an int64 conv weight would load as rounded floats)
NOT_FLOAT = [
    ("int64_conv_weight", "stem.conv.weight", torch.ones(64, 3, 7, 7, dtype=torch.int64), "torch.int64 tensor"),
    ("bool_tensor", "s2.b1.f.a.weight", torch.ones(128, 256, 1, 1, dtype=torch.bool), "torch.bool tensor"),
    ("uint8_bn", "stem.bn.weight", torch.ones(64, dtype=torch.uint8), "torch.uint8 tensor"),
    ("complex_fc", "head.fc.weight", torch.ones(2048, 2048, dtype=torch.complex64), "torch.complex64 tensor"),
    ("string", "s4.b3.f.c.weight", "not a tensor", "a str"),
    ("list", "head.fc.bias", [0.0] * 2048, "a list"),
    ("int_scalar", "stem.bn.running_mean", 3, "a int"),
    ("sparse_conv_weight", "stem.conv.weight", torch.ones(64, 3, 7, 7).to_sparse(), "a torch.sparse_coo tensor"),
    ("meta_bn", "stem.bn.weight", torch.ones(64, device="meta"), "a meta tensor (no data)"),
]


@pytest.mark.parametrize("case, key, value, kind", NOT_FLOAT, ids=[c[0] for c in NOT_FLOAT])
def test_non_float_weights_are_refused_not_cast(ws, tmp_path, entry, case, key, value, kind):
    path = tmp_path / "w.pyth"
    r50_like(path, key, value)
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws, out=out), "TEST.WEIGHTS", path, cwd=tmp_path,
                 subprocess=case == "int64_conv_weight")
    error_line(done, path, key, kind, "not a plain floating-point tensor")
    assert_nothing_written(out)


def test_int64_batch_counters_and_half_precision_weights_load(ws, tmp_path, tmp_path_factory, entry):
    """num_batches_tracked is int64 in every BatchNorm checkpoint; float16 weights are floating point."""
    state = torch.load(shared_weights(tmp_path_factory), map_location="cpu", weights_only=True)["model_state"]
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert counters and all(state[k].dtype == torch.int64 for k in counters)
    state["encoder_q.head.fc.bias"] = state["encoder_q.head.fc.bias"].half()
    path = tmp_path / "half_bias.pyth"
    torch.save({"model_state": state}, path)
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws, out=out), "TEST.WEIGHTS", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "log.txt").read_text().count("Retrieval results: mAP E: ") == 1


@pytest.mark.parametrize("key, value, kind", [
    ("_conv_stem.weight", torch.ones(32, 3, 3, 3, dtype=torch.int64), "torch.int64 tensor"),
    ("_blocks.3._bn1.weight", [1.0] * 144, "a list"),
])
def test_lite0_non_float_weights_are_refused_not_cast(ws, tmp_path, entry, key, value, kind):
    """The EfficientNet-Lite0 loader applies the same check as the CVNet one, with its own hint."""
    from model.efficientnet_lite import EfficientNetLite0

    state = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in EfficientNetLite0().state_dict().items()}
    state[key] = value
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    out = tmp_path / "out"
    done = entry("test.py", *base_args(ws, out=out), "MODEL.TYPE", "EFFICIENTNET_LITE0", "TEST.WEIGHTS", path,
                 cwd=tmp_path)
    error_line(done, path, key, kind, "not a plain floating-point tensor", "TEST.WEIGHTS auto")
    assert_nothing_written(out)
