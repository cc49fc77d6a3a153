"""Loading CVNet checkpoints into the ResNet of model/resnet.py, safely and completely.

Accepted: `{'model_state': state}` or a bare state dict; keys prefixed with `encoder_q.`,
`globalmodel.` or `module.` (in any combination). The re-ranking network's keys (`cv_learner.*`,
`conv2ds.*`) and other extras are ignored. Every backbone and head tensor must load, else the run
stops saying how many are missing and why (wrong depth, wrong head size, not a CVNet file).
Files are read with `torch.load(weights_only=True)`: loading never executes code.
"""

import pickle
import re
import warnings
from pathlib import Path

import torch

from errors import UserError, readable_file

PREFIXES = ("module.", "encoder_q.", "globalmodel.")
BACKBONE_KEY = re.compile(r"(stem|s[1-4]|head)\.")
WEIGHTS_URL_HINT = "download the CVNet weights (see README: Reproducing the paper)"


def checkpoint_path(weights, depth):
    """The checkpoint file: `weights` itself, or CVPR2022_CVNet_R{depth}.pyth inside a directory."""
    path = Path(weights)
    if path.is_dir():
        expected = readable_file(path / f"CVPR2022_CVNet_R{depth}.pyth", " (TEST.WEIGHTS)")
        if expected.is_file():
            return expected
        present = sorted(p.name for p in path.iterdir() if p.suffix in (".pyth", ".pth", ".pt"))
        found = f" (it holds {', '.join(present)}; pass one as TEST.WEIGHTS)" if present else ""
        raise UserError(f"no {expected.name} in {path}{found}: {WEIGHTS_URL_HINT}")
    readable_file(path, " (TEST.WEIGHTS)")
    if not path.is_file():
        raise UserError(f"weights not found: {path} (TEST.WEIGHTS): {WEIGHTS_URL_HINT}")
    return path


def _reason(error):
    """The informative line of a torch.load error (torch wraps it in paragraphs of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if re.search(r"GLOBAL|Unsupported|unsupported", line) and not line.startswith("Weights only load failed"):
            return re.sub(r"^.*WeightsUnpickler error:\s*", "", line)[:160]
    return lines[0][:160] if lines else type(error).__name__


def read_state_dict(path):
    """The tensors of a checkpoint file, without running any code it may contain."""
    readable_file(path, " (TEST.WEIGHTS)")
    if path.stat().st_size == 0:
        raise UserError(f"weights file is empty: {path}: {WEIGHTS_URL_HINT}")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about foreign pickles: the error says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"refusing to load {path}: it is not a plain tensor checkpoint ({_reason(error)}); "
                        "loading it could run code") from None
    except Exception as error:  # torch raises many types on foreign or damaged bytes
        raise UserError(f"cannot read weights {path}: truncated or not a PyTorch checkpoint "
                        f"({_reason(error)})") from None
    state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict (expected {{'model_state': ...}} or a bare state dict)")
    return state


def strip_prefixes(state):
    """Keys without their wrapper prefixes; on a clash the `encoder_q.` branch wins."""
    stripped = {}
    for key, value in state.items():
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name not in stripped or key.startswith(("encoder_q.", "module.encoder_q.")):
            stripped[name] = value
    return stripped


def _stage3_blocks(keys):
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"s3\.b(\d+)\.", k))}
    return max(blocks) if blocks else 0


def _mismatch_message(path, model, state, missing, misshaped):
    depth_of_blocks = {6: 50, 23: 101}
    found_depth = depth_of_blocks.get(_stage3_blocks(state))
    if found_depth and found_depth != model.depth:
        return (f"{path}: these weights look like ResNet-{found_depth} but MODEL.DEPTH is {model.depth}: "
                f"set MODEL.DEPTH {found_depth}")
    names = [*missing, *(f"{k} {tuple(state[k].shape)} vs {tuple(model.state_dict()[k].shape)}" for k in misshaped)]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"{path}: {len(missing)} backbone/head tensors missing or unexpected and {len(misshaped)} of another shape "
            f"({shown}); is it a CVNet ResNet-{model.depth} checkpoint?")


def _kind(value):
    """What a checkpoint entry is, for a message: `a torch.int64 tensor`, `a str`."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return f"a {value.layout} tensor"
        return "a meta tensor (no data)" if value.is_meta else f"a {value.dtype} tensor"
    return f"a {type(value).__name__}"


def _dense_float(value):
    """A plain (strided, with data) floating-point tensor: what a weight must be."""
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta
            and value.is_floating_point())


def check_float_tensors(path, state, keys, hint=WEIGHTS_URL_HINT):
    """Refuse (UserError naming the first key) entries that are not floating-point tensors: an
    integer, bool or complex tensor, a sparse or meta tensor, a string or a list would otherwise be
    cast or crash on load."""
    bad = [k for k in keys if k in state and not _dense_float(state[k])]
    if bad:
        raise UserError(f"{path}: {bad[0]} is {_kind(state[bad[0]])}, not a plain floating-point tensor"
                        f"{f' ({len(bad)} such entries)' if len(bad) > 1 else ''}; the file is not a usable "
                        f"checkpoint: {hint}")


def load_weights(model, weights, depth=None):
    """Load a CVNet checkpoint (file or directory) into `model` (a model.resnet.ResNet). Returns the path."""
    path = checkpoint_path(weights, depth if depth is not None else model.depth)
    state = strip_prefixes(read_state_dict(path))
    expected = model.state_dict()
    required = [k for k in expected if not k.endswith("num_batches_tracked")]  # int64 counters: not loaded
    check_float_tensors(path, state, required)
    missing = [k for k in required if k not in state]
    misshaped = [k for k in required if k in state and state[k].shape != expected[k].shape]
    unexpected = [k for k in state if k not in expected and BACKBONE_KEY.match(k)]
    if missing or misshaped or unexpected:
        raise UserError(_mismatch_message(path, model, state, missing + unexpected, misshaped))
    bad = [k for k in required if not torch.isfinite(state[k].float()).all()]
    if bad:
        raise UserError(f"{path}: {len(bad)} tensors hold NaN or Inf (first: {bad[0]}); the file is corrupt")
    model.load_state_dict({k: state[k] for k in required}, strict=False)
    return path

