"""Process tuning and device-aware extraction defaults.

`tune_process()` runs at the start of every entry point and in every DataLoader worker:

- glibc malloc is told to keep freed memory (no mmap for big blocks, no trimming). By default it
  hands every large activation back to the OS and maps it again on the next forward pass, so each
  pass faults every page in anew (docs/speed.md has the measured page faults). Features are
  bit-identical either way.
- intra-op threads follow the cores this process may use (`os.sched_getaffinity`), not the machine.

`ExtractOptions` holds the extraction switches; `resolve()` turns the config's "auto" values into
the device-aware defaults: on CPU batch 1 (batching same-size images only adds page traffic there)
and no decoding process next to the compute threads on a 2-core machine; on CUDA batches of 16,
pinned memory, non-blocking copies and one decoding process per spare core. Every CUDA-only branch
can be switched on explicitly on CPU, so the test suite runs it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from dataclasses import dataclass, replace

import torch

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
_KEEP = 1 << 30  # trim threshold / top pad: never give the heap top back below 1 GiB of slack

_tuned = {"malloc": None}


def usable_cores() -> int:
    """CPU cores this process may run on (affinity / cgroup cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def keep_freed_memory() -> bool:
    """mallopt: serve big blocks from the heap and never trim it. False (a no-op) without glibc."""
    if _tuned["malloc"] is not None:
        return _tuned["malloc"]
    ok = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only: musl and macOS have no mallopt, so this is skipped
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = all(mallopt(param, value) == 1 for param, value in
                 ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _KEEP), (M_TOP_PAD, 64 << 20)))
    except (OSError, AttributeError):
        ok = False  # no glibc here: the allocator stays as it is (more page faults, same results)
    _tuned["malloc"] = ok
    return ok


def tune_process(threads: int = 0) -> None:
    """Start-up tuning of this process: allocator, and `threads` intra-op threads (0 = the cores)."""
    keep_freed_memory()
    torch.set_num_threads(threads if threads > 0 else usable_cores())


def quiet_worker(_worker_id: int = 0) -> None:
    """Ctrl-C reaches every process of the terminal's group: a DataLoader worker ignores it, so only
    the main process reports it (one line) and shuts the workers down, with no traceback from each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tune_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: `quiet_worker`, the allocator fix, one thread (decoding is one
    image per worker)."""
    quiet_worker()
    keep_freed_memory()
    torch.set_num_threads(1)


@dataclass(frozen=True)
class ExtractOptions:
    """Extraction switches. Integers: 0 (batch, threads) / -1 (workers) = auto. Tri-states: "auto",
    "on", "off"; `resolve()` gives a copy with every value decided for a device."""

    batch_size: int = 0
    num_workers: int = -1
    num_threads: int = 0
    fold_bn: str = "auto"
    channels_last: str = "auto"
    pin_memory: str = "auto"
    non_blocking: str = "auto"
    uint8_transfer: str = "auto"

    def resolve(self, device: torch.device, cores: int | None = None) -> "ExtractOptions":
        cuda = torch.device(device).type == "cuda"
        cores = usable_cores() if cores is None else cores
        workers = self.num_workers if self.num_workers >= 0 else default_workers(cuda, cores)
        threads = self.num_threads if self.num_threads > 0 else (cores if not cuda else max(1, cores - workers))
        return replace(
            self,
            batch_size=self.batch_size if self.batch_size > 0 else (16 if cuda else 1),
            num_workers=workers, num_threads=threads,
            fold_bn=_switch(self.fold_bn, True),
            channels_last=_switch(self.channels_last, True),  # faster on CPU (R50, Lite0) and CUDA
            pin_memory=_switch(self.pin_memory, cuda),
            non_blocking=_switch(self.non_blocking, cuda),
            uint8_transfer=_switch(self.uint8_transfer, True))

    def on(self, name: str) -> bool:
        """A resolved switch's value."""
        return getattr(self, name) == "on"


def _switch(value: str, auto: bool) -> str:
    if value not in ("auto", "on", "off"):
        raise ValueError(f"switch must be auto, on or off, got {value!r}")
    return ("on" if auto else "off") if value == "auto" else value


def default_workers(cuda: bool, cores: int) -> int:
    """Decoding processes: on CUDA one per core but the main process's (a GPU outpaces a single
    decoder); on CPU decoding is a small fraction of a forward pass, so one process overlaps it, and
    none on <= 2 cores, where it would only take turns with the compute threads."""
    if cuda:
        return max(1, cores - 1)
    return 0 if cores <= 2 else 1


def workers_for(num_workers: int, device) -> int:
    """TEST.NUM_WORKERS for `device`: as given, or the default when -1 (auto)."""
    return num_workers if num_workers >= 0 else default_workers(torch.device(device).type == "cuda", usable_cores())


def options_from_cfg(cfg) -> ExtractOptions:
    """The TEST.* speed keys of a config (unresolved: "auto" stays until the device is known)."""
    test = cfg.TEST
    return ExtractOptions(batch_size=test.BATCH_SIZE, num_workers=test.NUM_WORKERS,
                          num_threads=test.NUM_THREADS, fold_bn=test.FOLD_BN,
                          channels_last=test.CHANNELS_LAST, pin_memory=test.PIN_MEMORY,
                          non_blocking=test.NON_BLOCKING, uint8_transfer=test.UINT8_TRANSFER)
