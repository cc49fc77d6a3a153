"""Extraction throughput through the real loader and extract_features, with the project's defaults,
on JPEGs with the real ROxford size distribution: images/s per (depth, precision), 3 scales.

    python bench/extract_throughput.py --device cuda --images 512          # the GPU figures
    python bench/extract_throughput.py --device cpu --images 2 --divisor 8 # smoke run

Each configuration runs once over the images to warm up (cuDNN autotuning, oneDNN primitives per
image size), then once timed. Random calibrated weights (bench/stand_ins.py).
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.stand_ins import calibrated_resnet_state, roxford_sizes, write_jpegs  # noqa: E402
from config import get_cfg_defaults  # noqa: E402
from test.build import build_descriptor  # noqa: E402
from test.data.images import RevisitopImages  # noqa: E402
from test.extraction.extract import extract_features  # noqa: E402
from test.extraction.runtime import ExtractOptions, tune_process  # noqa: E402


def run(descriptor, images, device, precision):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    features = extract_features(descriptor, images, device, precision=precision, desc=precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return features, seconds, after.ru_minflt - before.ru_minflt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--divisor", type=int, default=1, help="shrink the sizes (smoke runs)")
    parser.add_argument("--depths", type=int, nargs="*", default=[50, 101])
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    tune_process()
    device = torch.device(args.device)
    options = ExtractOptions().resolve(device)
    print(f"device {device}, defaults: batch {options.batch_size}, workers {options.num_workers}, "
          f"threads {options.num_threads}, fold_bn {options.fold_bn}, channels_last {options.channels_last}, "
          f"pin {options.pin_memory}, uint8 {options.uint8_transfer}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sizes = [(max(32, w // args.divisor), max(32, h // args.divisor))
                 for w, h in roxford_sizes(min(args.images, 4992), seed=1)]
        images = RevisitopImages(write_jpegs(folder, sizes))
        for depth in args.depths:
            cfg = get_cfg_defaults()
            cfg.MODEL.DEPTH = depth
            descriptor = build_descriptor(cfg)
            descriptor.backbone.load_state_dict(calibrated_resnet_state(depth))
            descriptor.to(device)
            reference = None
            for precision in args.precisions:
                run(descriptor, images, device, precision)  # warm-up pass
                features, seconds, faults = run(descriptor, images, device, precision)
                if reference is None:
                    reference = features
                row = {"depth": depth, "precision": precision, "images": len(images), "seconds": seconds,
                       "images_per_s": len(images) / seconds, "minor_faults_per_img": faults / len(images),
                       "min_cosine_to_first": float((features * reference).sum(1).min())}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| depth | precision | images | img/s | minor faults/img | min cosine to fp32 |\n|---|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| R{r['depth']} | {r['precision']} | {r['images']} | {r['images_per_s']:.1f} | "
              f"{r['minor_faults_per_img']:.0f} | {r['min_cosine_to_first']:.6f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
