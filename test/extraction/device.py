"""The one device resolver of the three entry points (DEVICE, --device)."""

import torch

from config import DEVICE_PATTERN
from errors import UserError


def resolve_device(name: str, flag: str = "DEVICE", local_rank: int | None = None) -> torch.device:
    """`auto` -> CUDA when present, else CPU; under torchrun `auto`/`cuda` -> cuda:LOCAL_RANK. An
    explicit CUDA device must exist. `flag` is how the user named the setting, for the message."""
    name = str(name).strip()
    if not DEVICE_PATTERN.fullmatch(name):
        raise UserError(f"bad {flag} {name!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"{flag} {name}: no CUDA device is available here; use {flag} cpu or auto")
    given = name
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        source = (f"{flag} {given} with LOCAL_RANK={local_rank} (environment, set by torchrun)" if given != name
                  else f"{flag} {name}")
        raise UserError(f"{source}: only {torch.cuda.device_count()} CUDA devices here")
    return device
