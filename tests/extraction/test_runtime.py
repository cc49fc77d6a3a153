"""test/extraction/runtime.py: the allocator fix keeps freed memory (page faults), defaults per device, config keys."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import load_cfg_from_args
from test.extraction.runtime import ExtractOptions, default_workers, options_from_cfg, usable_cores, workers_for

ROOT = Path(__file__).resolve().parents[2]

# A small conv net run over three image sizes, as an extraction does: two warm-up rounds, then the
# minor page faults and the resident-set growth of four more rounds. (A bare malloc/free loop is a
# poor stand-in: with 2 threads, small allocations land between the big blocks and glibc's aligned
# allocation then cannot reuse a freed block of exactly the same size.)
FAULTS = """
import resource, sys
sys.path.insert(0, {root!r})
import torch
if {tune}:
    from test.extraction.runtime import tune_process
    tune_process()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 64, 3, padding=1)).eval()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
def one_round():
    for size in ((320, 448), (448, 320), (384, 384)):
        net(torch.rand(1, 3, *size))
with torch.inference_mode():
    one_round()
    one_round()
    before, resident = faults(), resident_mib()
    for _ in range(4):
        one_round()
    print(faults() - before, resident_mib() - resident)
"""


def late_rounds(tune):
    """(minor page faults, resident MiB growth) of the four late rounds."""
    out = subprocess.run([sys.executable, "-c", FAULTS.format(root=str(ROOT), tune=tune)],
                         capture_output=True, text=True, check=True)
    faults, growth = out.stdout.split()[-2:]
    return int(faults), int(growth)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_in_again():
    activation_pages = 64 * 384 * 384 * 4 // 4096  # one conv output, the largest block of a round
    plain_faults, _ = late_rounds(False)
    tuned_faults, tuned_growth = late_rounds(True)
    assert plain_faults > 4 * activation_pages  # glibc unmaps each activation and maps it anew
    # kept: later rounds touch pages already mapped (0 faults on a quiet machine; a few thousand when
    # the kernel reclaims pages under memory pressure from other processes)
    assert tuned_faults < plain_faults // 10
    # ... and reuse them: the heap does not grow round after round (a freed block never reused would
    # add one activation, ~36 MiB, per round; now and then one block lands elsewhere, once)
    assert tuned_growth <= 40


def test_cpu_defaults_do_not_oversubscribe():
    two = ExtractOptions().resolve(torch.device("cpu"), cores=2)
    assert (two.batch_size, two.num_workers, two.num_threads) == (1, 0, 2)
    assert two.on("fold_bn") and two.on("channels_last") and two.on("uint8_transfer")
    assert not two.on("pin_memory") and not two.on("non_blocking")
    eight = ExtractOptions().resolve(torch.device("cpu"), cores=8)
    assert (eight.num_workers, eight.num_threads) == (1, 8)


def test_cuda_defaults_batch_pin_and_scale_workers_to_the_cores():
    options = ExtractOptions().resolve(torch.device("cuda"), cores=16)
    assert (options.batch_size, options.num_workers, options.num_threads) == (16, 15, 1)
    assert options.on("pin_memory") and options.on("non_blocking") and options.on("channels_last")
    assert default_workers(True, 1) == 1


def test_explicit_values_override_the_defaults():
    options = ExtractOptions(batch_size=3, num_workers=2, num_threads=1, fold_bn="off", channels_last="off",
                             pin_memory="on", non_blocking="on", uint8_transfer="off").resolve(torch.device("cpu"))
    assert (options.batch_size, options.num_workers, options.num_threads) == (3, 2, 1)
    assert (options.fold_bn, options.channels_last, options.pin_memory, options.non_blocking,
            options.uint8_transfer) == ("off", "off", "on", "on", "off")
    assert workers_for(4, "cpu") == 4 and workers_for(-1, "cpu") == default_workers(False, usable_cores())


def test_config_keys_reach_the_options():
    cfg = load_cfg_from_args(["TEST.BATCH_SIZE", "4", "TEST.NUM_WORKERS", "0", "TEST.NUM_THREADS", "1",
                              "TEST.FOLD_BN", "off", "TEST.CHANNELS_LAST", "on", "TEST.PIN_MEMORY", "on",
                              "TEST.NON_BLOCKING", "off", "TEST.UINT8_TRANSFER", "off"])
    assert options_from_cfg(cfg) == ExtractOptions(4, 0, 1, "off", "on", "on", "off", "off")
    assert options_from_cfg(load_cfg_from_args([])) == ExtractOptions()


@pytest.mark.parametrize("key, value, expected", [("TEST.FOLD_BN", "maybe", "one of auto, on, off"),
                                                  ("TEST.NUM_WORKERS", "-2", "-1 for auto"),
                                                  ("TEST.NUM_THREADS", "-1", "0 for auto")])
def test_bad_speed_keys_stop_test_py_with_one_line(key, value, expected):
    out = subprocess.run([sys.executable, "test.py", key, value], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0] and expected in lines[0]
