"""Benchmark: extraction speed, reranking speed and memory against the per-query baseline, and the
onemeval search over synthetic distractors. Builds all its inputs; prints a table and writes JSON.

    python bench/run.py                     # CPU here: a few minutes
    python bench/run.py --quick             # fewer images and configurations
    python bench/run.py --device cuda       # the same on a GPU

Each reranking measurement runs in a fresh child process whose peak-RSS counter is reset after the
inputs are built, so "peak extra" is the memory the method itself needed.
"""

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# --------------------------------------------------------------------------- memory helpers

def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); returns the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kib("VmRSS") / 1024


def peak_rss_mib():
    return _status_kib("VmHWM") / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- extraction

def bench_extraction(device, depth, scale_list, batch_size, precision, n_images, size=(768, 1024)):
    """Forward passes of the descriptor as extract_features prepares it (BN folded, channels-last:
    the defaults), on random images. Page faults and CPU times are this process's (a regression of
    the allocator fix in test/extraction/runtime.py shows as millions of minor faults)."""
    import resource

    from config import get_cfg_defaults
    from test.build import build_descriptor
    from test.extraction.extract import autocast_context, prepared_descriptor
    from test.extraction.runtime import ExtractOptions

    cfg = get_cfg_defaults()
    cfg.MODEL.DEPTH, cfg.TEST.SCALE_LIST = depth, scale_list
    options = ExtractOptions(batch_size=batch_size).resolve(device)
    descriptor = prepared_descriptor(build_descriptor(cfg).to(device), options)
    images = torch.randn(batch_size, 3, *size, device=device)
    if options.on("channels_last"):
        images = images.contiguous(memory_format=torch.channels_last)
    batches = max(1, n_images // batch_size)
    with torch.inference_mode(), autocast_context(device, precision):
        descriptor(images)  # warm-up (cuDNN autotuning / oneDNN primitives, allocator)
        sync(device)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(batches):
            descriptor(images)
        sync(device)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = batches * batch_size
    return {"depth": depth, "scales": scale_list, "batch": batch_size, "precision": precision,
            "images": n, "images_per_s": n / seconds,
            "user_s_per_img": (after.ru_utime - before.ru_utime) / n,
            "sys_s_per_img": (after.ru_stime - before.ru_stime) / n,
            "minor_faults_per_img": (after.ru_minflt - before.ru_minflt) / n,
            "major_faults_per_img": (after.ru_majflt - before.ru_majflt) / n}


def bench_precision_agreement(device, n_images=4, size=(384, 512)):
    """Cosine between reduced-precision and fp32 descriptors of generated photos-like images
    (a calibrated random ResNet-50, as in the tests: real CVNet weights are not available here)."""
    import numpy as np

    from config import get_cfg_defaults
    from test.build import build_descriptor
    from test.data.synthetic import random_resnet, textured_image
    from test.extraction.extract import autocast_context

    descriptor = build_descriptor(get_cfg_defaults())
    descriptor.backbone.load_state_dict(random_resnet(50, seed=0).state_dict())
    descriptor.to(device)
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy((textured_image(size[1], size[0], rng, i).transpose(2, 0, 1)
                                            .astype(np.float32) / 255 - 0.45) / 0.225) for i in range(n_images)])
    images = images.to(device)
    rows = []
    with torch.inference_mode():
        reference = descriptor(images).float()
        for precision in (["bf16", "fp16"] if device.type == "cuda" else ["bf16"]):
            with autocast_context(device, precision):
                reduced = descriptor(images).float()
            cosine = (reduced * reference).sum(1) / reduced.norm(dim=1)
            rows.append({"precision": precision, "min_cosine_to_fp32": cosine.min().item(),
                         "mean_cosine_to_fp32": cosine.mean().item()})
    return rows


# --------------------------------------------------------------------------- reranking

def _rerank_inputs(nq, n, dim, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1).to(device)
    Q = torch.nn.functional.normalize(torch.randn(nq, dim, generator=generator), dim=1).to(device)
    ranks = torch.argsort(-(X @ Q.T), dim=0)
    return Q, X, ranks


def _rerank_child(method, nq, n, dim, M, K, device_name, queue):
    device = torch.device(device_name)
    Q, X, ranks = _rerank_inputs(nq, n, dim, device)
    if method == "superglobal":
        from modules.reranking import rerank as fn
    elif method == "loop":
        from bench.rerank_baseline import rerank_loop as fn
    else:
        from bench.rerank_baseline import rerank_official as fn
    if device.type == "cuda":
        fn(Q, X, ranks, M=M, K=K)  # warm-up
        torch.cuda.reset_peak_memory_stats(device)
    base = reset_peak_rss()
    sync(device)
    start = time.perf_counter()
    out = fn(Q, X, ranks, M=M, K=K)
    sync(device)
    seconds = time.perf_counter() - start
    extra = peak_rss_mib() - base
    if device.type == "cuda":
        extra = torch.cuda.max_memory_allocated(device) / 2**20 - (Q.numel() + X.numel()) * 4 / 2**20
    queue.put({"method": method, "seconds": seconds, "ms_per_query": 1000 * seconds / nq,
               "peak_extra_mib": extra, "ranks": out.cpu().numpy()})  # by value: the child exits


def bench_rerank(method, nq, n, dim, M, K, device):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_rerank_child, args=(method, nq, n, dim, M, K, str(device), queue))
    child.start()
    result = queue.get()
    child.join()
    return result


# --------------------------------------------------------------------------- onemeval

def bench_onemeval(sizes, device):
    try:
        from bench.r1m_search import run_benchmark
    except ImportError:
        return [{"error": "bench/r1m_search.py not available"}]
    return run_benchmark(sizes=sizes, nq=70, dim=2048, device=str(device))


# --------------------------------------------------------------------------- report

def table(rows, columns):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="fewer images and configurations")
    parser.add_argument("--skip", nargs="*", default=[], choices=["extraction", "rerank", "onemeval"])
    parser.add_argument("--onemeval-sizes", nargs="*", type=int, default=[200_000])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    from test.extraction.runtime import tune_process
    tune_process()  # as every entry point does: the allocator fix and the thread count
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    report = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"device: {report['device']} ({report['threads']} threads), torch {torch.__version__}")

    if "extraction" not in args.skip:
        n_images = (32 if cuda else 2) if args.quick else (64 if cuda else 2)
        batched = 16 if cuda else 2
        # on CPU, reduced precision is only timed batched: the full grid would take many minutes
        grid = [(p, b) for p in (["fp32", "bf16", "fp16"] if cuda else ["fp32"]) for b in (1, batched)]
        grid += [] if cuda else [("bf16", batched)]
        rows = []
        for depth in ([50] if args.quick else [50, 101]):
            for scales in ([3] if args.quick else [1, 3]):
                for precision, batch in grid:
                    rows.append(bench_extraction(device, depth, scales, batch, precision, n_images))
                    print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
        report["extraction_1024x768"] = rows
        print("\nExtraction, 1024x768 images\n" + table(rows, list(rows[0])))
        agreement = bench_precision_agreement(device)
        report["precision_agreement"] = agreement
        print("\nReduced precision vs fp32 descriptors\n" + table(agreement, list(agreement[0])))

    if "rerank" not in args.skip:
        nq, n, dim, M, K = 70, 6322, 2048, 400, 9
        methods = ["superglobal", "loop"] + ([] if args.quick else ["official"])
        rows = [bench_rerank(m, nq, n, dim, M, K, device) for m in methods]
        # random float32 data is full of near-ties, so agreement is judged against float64
        from modules.reranking import rerank
        Q, X, ranks = _rerank_inputs(nq, n, dim, torch.device("cpu"))
        reference = rerank(Q.double(), X.double(), ranks, M=M, K=K).numpy()
        for row in rows:
            row["columns_equal_to_fp64"] = f"{int((row.pop('ranks') == reference).all(0).sum())}/{nq}"
        fast = rows[0]
        for row in rows:
            row["speedup_of_superglobal"] = row["seconds"] / fast["seconds"]
            row["memory_ratio"] = row["peak_extra_mib"] / max(fast["peak_extra_mib"], 1e-9)
        report["rerank"] = {"nq": nq, "N": n, "D": dim, "M": M, "K": K, "rows": rows}
        print(f"\nReranking, {nq} queries x {n} x {dim}, M={M}, K={K}\n" + table(rows, list(rows[0])))

    if "onemeval" not in args.skip:
        rows = bench_onemeval(args.onemeval_sizes, device)
        report["onemeval"] = rows
        print("\nonemeval search, 70 queries\n" + table(rows, list(rows[0])))

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
