"""Mixed precision per backbone: which modules stay in fp32 when extraction runs in bf16 / fp16.

Autocast runs convolutions and matrix products in the reduced type. Some parts of a trained network
lose too much there (a backbone's plan says which, measured: docs/precision.md); a plan names them
and `apply_precision_plan` makes each one an fp32 island: autocast off inside, inputs cast to fp32.
The next module under autocast casts back down, so the rest still runs reduced.

A plan is declared once per backbone in its registry entry (model/registry.py) and applied by the
extraction code to a copy of the descriptor; with fp32 nothing is applied, so fp32 results are
those of the plain module, bit for bit.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class PrecisionPlan:
    """`fp32`: fnmatch patterns of module names, relative to the SuperGlobal descriptor (e.g.
    ``backbone._conv_stem``, ``backbone._blocks.*._depthwise_conv``, ``rgem``), that run in fp32 under
    bf16/fp16. `warning`: one line shown when reduced precision is asked for with this backbone and
    the plan is known not to keep the mAP (empty when it does)."""

    fp32: tuple[str, ...] = ()
    warning: str = ""

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.fp32)


class Fp32Island(nn.Module):
    """Runs `module` in fp32 with autocast off, whatever the surrounding autocast says."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.module(x.float())


def fp32_module_names(model: nn.Module, plan: PrecisionPlan) -> list[str]:
    """Names of the modules of `model` that `plan` keeps in fp32 (outermost only, in module order)."""
    names = []
    for name, _ in model.named_modules():
        if name and plan.matches(name) and not any(name.startswith(kept + ".") for kept in names):
            names.append(name)
    return names


def apply_precision_plan(model: nn.Module, plan: PrecisionPlan | None, copy_first: bool = True) -> nn.Module:
    """`model` (or a deep copy of it) with every module `plan` names wrapped in an Fp32Island.
    A pattern that names nothing is an error, so a renamed module cannot silently drop out of a plan."""
    if plan is None or not plan.fp32:
        return model
    names = fp32_module_names(model, plan)
    every = [n for n, _ in model.named_modules()]
    unused = [p for p in plan.fp32 if not any(fnmatch.fnmatchcase(n, p) for n in every)]
    if unused:
        raise ValueError(f"precision plan patterns match no module: {unused}")
    model = copy.deepcopy(model) if copy_first else model
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp32Island(getattr(parent, child)))
    return model
