"""Two-stage cost, side by side: SuperGlobal reranking against CVNet-Rerank for the same queries.

    python bench/two_stage.py                    # about 4 CPU minutes (wall: more on a busy machine)
    python bench/two_stage.py --timed-pairs 0    # time every candidate pair (CPU: hours at full size)
    python bench/two_stage.py --device cuda --timed-pairs 0 --compare-topk 100 --compare-divisor 1

Inputs: the real ROxford5k ground truth and image sizes (../shared/data/revisitop/), stand-in JPEGs
of those sizes and stand-in weights (test/data/synthetic.py; CVNet-Rerank's head has the real shapes). The
first stage is simulated from the ground truth: per landmark one shared random order of the database
with the query's relevant and junk images first, so that, as in real ROxford retrieval, queries of
one landmark share most of their candidates. Candidates are CVNet's per-protocol top-k (test/
retrieval/cvnet_rerank.py).

Part 1, per query at full size: SuperGlobal reranking (modules.reranking.rerank, M=400, K=9, on
2048-d vectors) and CVNet-Rerank with the candidates' stage-3 maps given (conv2ds, correlation,
CVLearner) and with them extracted from the pixels (CVNet's loop). CVNet's time per query is the
mean over `--timed-pairs` timed pairs times the query's number of pairs (0: every pair timed).
Part 2: the cached/batched PairScorer against CVNet's per-pair loop on the same pairs (scores
compared), at `--compare-divisor` times smaller images.
"""

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.run import peak_rss_mib, reset_peak_rss  # noqa: E402
from bench.stand_ins import photo_like  # noqa: E402
from model.cvnet_rerank import build_cvnet_rerank, load_rerank_weights  # noqa: E402
from modules.reranking import rerank  # noqa: E402
from test.data.gnd import safe_load_pickle  # noqa: E402
from test.data.synthetic import REAL_DATA, real_sizes, write_checkpoint  # noqa: E402
from test.extraction.cvnet_global_loop import CVNetImages  # noqa: E402
from test.two_stage.cvnet_rerank import PairScorer, candidate_labels, scored_pairs, select_candidates  # noqa: E402

PAPER_SPEEDUP = 64865


def landmarks():
    """Landmark id of every ROxford5k query (the second field of its sizes line)."""
    lines = (REAL_DATA / "roxford5k_sizes_query.txt").read_text().split()
    return [int(line.split(",")[1]) for line in lines]


def first_stage(gnd, queries, n_db, landmark, seed=0):
    """(N x nq) ranks: per landmark one shared random database order, each query's easy, hard and
    junk images first (in that same order)."""
    ranks = []
    for q in queries:
        shared = np.random.default_rng([seed, landmark[q]]).permutation(n_db)
        relevant = np.zeros(n_db, bool)
        for key in ("easy", "hard", "junk"):
            relevant[np.asarray(gnd[q][key], dtype=np.int64)] = True
        ranks.append(np.concatenate([shared[relevant[shared]], shared[~relevant[shared]]]))
    return np.stack(ranks, axis=1)


def write_queries(folder, sizes, divisor, seed):
    """Query images at their cropped sizes (the sizes list holds the crops), boxes = the whole image."""
    paths, _ = write_images(folder, sizes, divisor, seed=seed)
    return paths, [[0.0, 0.0, max(16, w // divisor), max(16, h // divisor)] for w, h in sizes]


def write_images(folder, sizes, divisor, seed=0):
    """JPEGs at (w, h) / divisor (at least 16 pixels a side); returns their paths and None."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(path), photo_like(max(16, w // divisor), max(16, h // divisor), rng))
        paths.append(str(path))
    return paths, None


class Usage:
    """Wall, user and system seconds, major/minor page faults and peak RSS growth of a block."""

    def __enter__(self):
        self.base = reset_peak_rss()
        self.ru = resource.getrusage(resource.RUSAGE_SELF)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = resource.getrusage(resource.RUSAGE_SELF)
        self.seconds = time.perf_counter() - self.start
        self.user, self.sys = end.ru_utime - self.ru.ru_utime, end.ru_stime - self.ru.ru_stime
        self.faults = end.ru_minflt - self.ru.ru_minflt + end.ru_majflt - self.ru.ru_majflt
        self.peak_mib = peak_rss_mib() - self.base


def map_bytes(width, height, channels=1024):
    """float32 bytes of the stage-3 map of a (width, height) image (stride 16, the convs' rounding)."""
    def side(n):
        for _ in range(4):
            n = (n - 1) // 2 + 1
        return n
    return channels * side(width) * side(height) * 4


def superglobal_per_query(nq, n_db, repeats=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(n_db, 2048, generator=g), dim=1)
    Q = torch.nn.functional.normalize(torch.randn(nq, 2048, generator=g), dim=1)
    ranks = torch.argsort(-(X @ Q.T), dim=0, stable=True)
    rerank(Q, X, ranks, M=400, K=9, beta=0.15, columns_are_queries=True)  # warm-up
    runs = []
    for _ in range(repeats):
        with Usage() as usage:
            rerank(Q, X, ranks, M=400, K=9, beta=0.15, columns_are_queries=True)
        runs.append(usage)
    best = sorted(runs, key=lambda u: u.seconds)[len(runs) // 2]
    return best, best.seconds / nq


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


@torch.inference_mode()
def cvnet_per_query(model, pairs, q_paths, q_boxes, db_paths, timed_pairs, device):
    """{query: (pairs, (wall, CPU) s per pair from stored maps, (wall, CPU) s per pair with
    extraction)}. One untimed pair first: the first calls build the convolution kernels."""
    q_images = CVNetImages(q_paths, q_boxes, scales=[1.0])
    d_images = CVNetImages(db_paths, None, scales=[1.0])
    out, warm = {}, False
    for q in np.unique(pairs[:, 1]):
        candidates = pairs[pairs[:, 1] == q, 0]
        timed = candidates if timed_pairs == 0 else candidates[:timed_pairs]
        query = model.prepare(q_images[int(q)][1][0][None].to(device))
        if not warm:
            model.score(query, model.prepare(d_images[int(timed[0])][1][0][None].to(device)))
            warm = True
        stored, scoring, extracting = [], np.zeros(2), np.zeros(2)
        for index in timed:
            fmap, wall, cpu = _timed(lambda: model.correlation_map(d_images[int(index)][1][0][None].to(device)))
            extracting += (wall, cpu)
            stored.append(fmap)
        for fmap in stored:
            _, wall, cpu = _timed(lambda: float(model.score(query, model.scaled(fmap))))
            scoring += (wall, cpu)
        out[int(q)] = (len(candidates), scoring / len(timed), (scoring + extracting) / len(timed))
    return out


@torch.inference_mode()
def per_pair_loop(model, pairs, q_paths, q_boxes, db_paths, device):
    """CVNet's loop: per query its map once, per pair the candidate's map again, one pair at a time."""
    q_images = CVNetImages(q_paths, q_boxes, scales=[1.0])
    d_images = CVNetImages(db_paths, None, scales=[1.0])
    scores = np.zeros(len(pairs), np.float32)
    query, current = None, None
    for at, (index, q) in enumerate(pairs):
        if q != current:
            query, current = model.prepare(q_images[int(q)][1][0][None].to(device)), q
        scores[at] = float(model.score(query, model.prepare(d_images[int(index)][1][0][None].to(device))))
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=3, help="queries of part 1 (ROxford order)")
    parser.add_argument("--topk", type=int, default=100, help="CVNet's top-k per protocol (part 1)")
    parser.add_argument("--timed-pairs", type=int, default=1, help="pairs timed per query in part 1 (0: all)")
    parser.add_argument("--divisor", type=int, default=1, help="image size divisor of part 1 (1: real sizes)")
    parser.add_argument("--compare-queries", type=int, default=5, help="queries of part 2, all of one landmark")
    parser.add_argument("--compare-topk", type=int, default=10)
    parser.add_argument("--compare-divisor", type=int, default=4)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    from test.extraction.runtime import tune_process
    tune_process()
    device = torch.device(args.device)
    gnd_file = REAL_DATA / "gnd_roxford5k.pkl"
    if not gnd_file.is_file():
        sys.exit(f"needs the real ROxford5k ground truth and sizes in {REAL_DATA}")
    gnd = safe_load_pickle(gnd_file)["gnd"]
    db_sizes, q_sizes = real_sizes("roxford5k", "db"), real_sizes("roxford5k", "query")
    n_db = len(db_sizes)
    work = Path(tempfile.mkdtemp(prefix="two_stage_"))
    write_checkpoint(work / "CVPR2022_CVNet_R50.pyth", depth=50, seed=0)
    model = build_cvnet_rerank(50)
    load_rerank_weights(model, work / "CVPR2022_CVNet_R50.pyth")
    model.to(device)

    rows, report = [], {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"}
    # part 1 ---------------------------------------------------------------------------------
    landmark = landmarks()
    queries = list(range(args.queries))
    ranks = first_stage(gnd, queries, n_db, landmark)
    local_gnd = [gnd[q] for q in queries]
    pairs, _ = scored_pairs(ranks, select_candidates(candidate_labels(ranks, local_gnd), args.topk))
    needed = np.unique(pairs[:, 0])
    timed_ids = np.concatenate([pairs[pairs[:, 1] == q, 0][:args.timed_pairs or None] for q in range(len(queries))])
    db_paths = [""] * n_db
    written, _ = write_images(work / "db", [db_sizes[i] for i in np.unique(timed_ids)], args.divisor)
    for i, path in zip(np.unique(timed_ids), written):
        db_paths[i] = path
    q_paths, q_boxes = write_queries(work / "q", [q_sizes[q] for q in queries], args.divisor, seed=1)
    sg_usage, sg_seconds = superglobal_per_query(len(queries), n_db)
    with Usage() as cv_usage:
        per_query = cvnet_per_query(model, pairs, q_paths, q_boxes, db_paths, args.timed_pairs, device)
    pair_counts = [n for n, _, _ in per_query.values()]
    stored = np.mean([n * t for n, t, _ in per_query.values()], axis=0)
    extracted = np.mean([n * t for n, _, t in per_query.values()], axis=0)
    sg = np.array([sg_seconds, (sg_usage.user + sg_usage.sys) / len(queries)])
    rows += [("SuperGlobal reranking (M=400, K=9)", sg, sg_usage.peak_mib, 2048 * 4),
             ("CVNet-Rerank, stored stage-3 maps", stored, cv_usage.peak_mib,
              float(np.mean([map_bytes(*s) for s in db_sizes]))),
             ("CVNet-Rerank, maps extracted (CVNet's loop)", extracted, cv_usage.peak_mib, None)]
    print(f"\n{report['date']}; {report['machine']}; {len(queries)} ROxford queries, top-{args.topk} per "
          f"protocol: {pair_counts} pairs per query ({len(pairs)} in all, {len(needed)} distinct images); "
          f"images at 1/{args.divisor} of the real sizes; CVNet time per query = mean of "
          f"{args.timed_pairs or 'all'} timed pairs x pairs\n")
    print(f"{'reranker':<44} {'wall s/query':>12} {'CPU s/query':>12} {'peak MiB':>9} {'bytes stored / db image':>24}")
    for name, seconds, peak, stored_bytes in rows:
        shown = "the images" if stored_bytes is None else f"{stored_bytes:,.0f}"
        print(f"{name:<44} {seconds[0]:>12.4g} {seconds[1]:>12.4g} {peak:>9.0f} {shown:>24}")
    ratio_stored, ratio_extracted = float(stored[1] / sg[1]), float(extracted[1] / sg[1])
    print(f"\nCVNet-Rerank / SuperGlobal CPU time per query: {ratio_stored:,.0f}x (stored maps), "
          f"{ratio_extracted:,.0f}x (maps extracted); wall: {stored[0] / sg[0]:,.0f}x, {extracted[0] / sg[0]:,.0f}x; "
          f"paper: {PAPER_SPEEDUP:,}x")
    print("What differs: the paper timed its GPU, these are CPU seconds with stand-in weights and a simulated "
          "first stage, and the paper's exact counting (loading, extraction, batch) is not stated, so only the "
          "order of magnitude is comparable.")
    # part 2 ---------------------------------------------------------------------------------
    queries = [q for q in range(len(landmark)) if landmark[q] == landmark[0]][:args.compare_queries]
    ranks = first_stage(gnd, queries, n_db, landmark, seed=1)
    pairs, _ = scored_pairs(ranks, select_candidates(candidate_labels(ranks, [gnd[q] for q in queries]),
                                                     args.compare_topk))
    needed = np.unique(pairs[:, 0])
    small = [""] * n_db
    written, _ = write_images(work / "db_small", [db_sizes[i] for i in needed], args.compare_divisor, seed=2)
    for i, path in zip(needed, written):
        small[i] = path
    q_paths, q_boxes = write_queries(work / "q_small", [q_sizes[q] for q in queries], args.compare_divisor, seed=3)
    with Usage() as loop:
        plain = per_pair_loop(model, pairs, q_paths, q_boxes, small, device)
    scorer = PairScorer(model, device)
    with Usage() as cached:
        fast = scorer.score(pairs, q_paths, q_boxes, small, desc="cached")
    print(f"\ncached/batched vs CVNet's per-pair loop, same {len(pairs)} pairs ({len(queries)} queries, "
          f"top-{args.compare_topk}, {len(needed)} distinct images, images at 1/{args.compare_divisor}):")
    print(f"{'path':<22} {'wall s':>8} {'user s':>8} {'sys s':>7} {'faults':>9} {'peak MiB':>9}")
    for name, u in (("per-pair loop", loop), ("cached + batched", cached)):
        print(f"{name:<22} {u.seconds:>8.2f} {u.user:>8.2f} {u.sys:>7.2f} {u.faults:>9} {u.peak_mib:>9.0f}")
    diff = float(np.abs(plain - fast).max())
    cpu_ratio = (loop.user + loop.sys) / (cached.user + cached.sys)
    print(f"speed-up {loop.seconds / cached.seconds:.2f}x (wall), {cpu_ratio:.2f}x "
          f"(CPU time); max |score difference| {diff:.2e}")
    report.update(rows=[(n, list(map(float, t)), p, b) for n, t, p, b in rows], ratio_stored=ratio_stored,
                  ratio_extracted=ratio_extracted, pairs_per_query=pair_counts,
                  compare={"pairs": len(pairs), "images": len(needed), "loop_s": loop.seconds,
                           "cached_s": cached.seconds, "max_score_diff": diff})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
