"""CPU vs another device (CUDA): the same descriptors, ranks and mAP on generated data.

    python bench/device_consistency.py --device cuda

Builds a small revisitop-layout dataset and a calibrated random CVNet checkpoint (as the tests do),
extracts features on the CPU and on --device with fp32, then compares descriptor cosines, the
reranked ranks and the search over synthetic distractors. Prints one line per check and exits 1
when a check fails. Meant for a session that has a GPU machine (see bench/device_check.sh).
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from config import get_cfg_defaults  # noqa: E402
from modules.reranking import rerank  # noqa: E402
from test.build import build_descriptor  # noqa: E402
from test.data.gnd import load_gnd, protocols  # noqa: E402
from test.data.images import RevisitopImages  # noqa: E402
from test.data.synthetic import random_resnet, write_revisitop  # noqa: E402
from test.extraction.extract import extract_features  # noqa: E402
from test.r1m.search import search_with_r1m, wanted_from_protocols  # noqa: E402
from test.retrieval.similarity import rank_by_similarity  # noqa: E402


def features_on(device, gnd, weights, batch_size):
    descriptor = build_descriptor(get_cfg_defaults())
    descriptor.backbone.load_state_dict(weights)
    descriptor.to(device)
    images = RevisitopImages(gnd.db_paths)
    return extract_features(descriptor, images, device, batch_size=batch_size, num_workers=2, desc=str(device))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args()
    device = torch.device(args.device)
    failures = 0

    def check(name, ok, detail):
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        write_revisitop(folder, "roxford5k", n_db=args.images, n_query=4, divisor=4, seed=0)
        gnd = load_gnd(folder, "roxford5k")
        weights = random_resnet(50, seed=0).state_dict()
        cpu = features_on(torch.device("cpu"), gnd, weights, batch_size=1)
        # PyTorch lets cuDNN convolutions use TF32 by default (as when the paper's numbers were
        # made); strict fp32 first, then the default, for information.
        torch.backends.cudnn.allow_tf32 = False
        other = features_on(device, gnd, weights, batch_size=8)
        torch.backends.cudnn.allow_tf32 = True
        default = features_on(device, gnd, weights, batch_size=8)
    cosine = (cpu * other).sum(1)
    check("descriptors (strict fp32)", cosine.min() > 0.9999,
          f"min cosine {cosine.min():.6f} over {len(cosine)} images")
    print(f"info descriptors with default TF32 convolutions: min cosine {(cpu * default).sum(1).min():.6f}")

    X_cpu = torch.from_numpy(cpu)
    Q_cpu = X_cpu[:4]
    ranks_cpu = rerank(Q_cpu, X_cpu, rank_by_similarity(X_cpu, Q_cpu), M=20, K=3, columns_are_queries=True)
    X_dev, Q_dev = X_cpu.to(device), Q_cpu.to(device)
    ranks_dev = rerank(Q_dev, X_dev, rank_by_similarity(X_dev, Q_dev), M=20, K=3, columns_are_queries=True).cpu()
    check("rerank on the same features", torch.equal(ranks_cpu, ranks_dev),
          f"{int((ranks_cpu == ranks_dev).all(0).sum())}/{ranks_cpu.shape[1]} columns equal")

    generator = torch.Generator().manual_seed(1)
    distractors = torch.nn.functional.normalize(torch.randn(50_000, X_cpu.shape[1], generator=generator), dim=1)
    wanted = wanted_from_protocols(protocols(gnd))  # 4 queries, database ids
    found_cpu = search_with_r1m(Q_cpu, X_cpu, distractors, 30, wanted)
    found_dev = search_with_r1m(Q_dev, X_dev, distractors, 30, wanted)
    same = torch.equal(found_cpu.top.cpu(), found_dev.top.cpu())
    check("+distractor search top 30", same, "identical" if same else "differs (near-ties of float32 scores?)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
