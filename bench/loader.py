"""Loader-only throughput: decoding 1024x768 JPEGs as the extraction loader does, no model.

    python bench/loader.py                  # 48 images, 1 and 2 workers
    python bench/loader.py --cores 16       # the arithmetic for another machine

Per worker: images/s of one process running the dataset's __getitem__ in a loop, for the uint8
path (what the datasets ship now: decode + HWC->CHW) and the old float32 path (decode + numpy
normalisation in the worker, 4x the bytes). Then through a DataLoader with W workers (IPC included).
From the per-worker figure: the workers needed for 1,000 img/s, and what the CUDA default worker
count (test/extraction/runtime.py) feeds on --cores cores.
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bench.stand_ins import write_jpegs  # noqa: E402
from test.data.images import RevisitopImages, load_image  # noqa: E402
from test.extraction.runtime import default_workers, tune_worker  # noqa: E402

TARGET = 1000  # img/s: one H200 at R50, 3 scales, bf16 needs roughly 800+


class Float32Images(Dataset):
    """The old loader: normalised float32 CHW in the worker."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return index, torch.from_numpy(load_image(self.paths[index]))


def per_worker_rate(dataset, rounds=2):
    """Images/s of one process calling __getitem__ over the dataset (best of `rounds`)."""
    dataset[0]
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        best = max(best, len(dataset) / (time.perf_counter() - start))
    return best


def loader_rate(dataset, workers):
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=tune_worker if workers else None,
                        prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--cores", type=int, default=16, help="cores of the machine to do the arithmetic for")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, [(1024, 768)] * args.images)
        datasets = {"uint8 (now)": RevisitopImages(paths), "float32 (before)": Float32Images(paths)}
        print(f"1024x768 JPEGs, {args.images} images, 1 thread per worker")
        print("| path | img/s per worker | ms per image | "
              + " | ".join(f"DataLoader {w} workers img/s" for w in args.workers) + " |")
        print("|---|--:|--:|" + "--:|" * len(args.workers))
        rates = {}
        for name, dataset in datasets.items():
            rate = rates[name] = per_worker_rate(dataset)
            through = [loader_rate(dataset, w) for w in args.workers]
            print(f"| {name} | {rate:.0f} | {1000 / rate:.1f} | " + " | ".join(f"{r:.0f}" for r in through) + " |")
    rate = rates["uint8 (now)"]
    workers = default_workers(True, args.cores)
    print(f"\n{TARGET} img/s needs {math.ceil(TARGET / rate)} workers at {rate:.0f} img/s each; the CUDA default "
          f"on {args.cores} cores is {workers} workers: {workers * rate:.0f} img/s by arithmetic "
          f"(float32 path: {workers * rates['float32 (before)']:.0f} img/s)")


if __name__ == "__main__":
    main()
