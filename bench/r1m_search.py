"""Benchmark: the bounded-memory +1M search (test/r1m/search.py) on synthetic distractors.

    python bench/r1m_search.py --sizes 200000 1000000 --nq 70 --dim 2048 [--json out.json]
    python bench/r1m_search.py --sizes 200000 --full-max 200000     # also time the official method

For each size: writes a random L2-normalised distractor matrix as a float32 .npy under a temporary
directory (or --workdir), a block of rows at a time (never two copies in memory; 8.2 GB at 1M x
2048), builds a database of 6322 x D with planted easy / hard positives and 70 queries, then in a
fresh child process (so its peak-RSS counter covers only the measured work): opens the file
(``load_r1m_features``, memory-mapped), scans it for NaN / Inf, runs ``search_with_r1m``
(top 400 + exact positions), ``evaluate_from_search`` and ``rerank_top`` (M=400).

Memory: ``peak_rss_extra`` = VmHWM - RSS before loading (includes the file pages of the memory map
that the process touched: up to the whole file, reclaimable page cache, not allocations);
``peak_anon_extra`` = the largest RssAnon seen by a 2 ms sampler minus RssAnon before loading: the
memory the method itself allocated, what "extra memory beyond the distractor matrix" means.

``--full-max N``: for sizes <= N also runs the official method in its own child (concatenate X and
the distractors in memory, X_all @ Q^T, full stable argsort, evaluate, rerank the top M of the full
ranks) and compares mAPs and the positions of the wanted ids. Timings are with the file in the page
cache (it has just been written); a cold read adds disk time (8.2 GB at the disk's speed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

N_DB = 6322          # ROxford5k database size
KEEP = 400           # TEST.TOPK
M, K, BETA = 400, 9, 0.15
BUILD_ROWS = 16384


# --------------------------------------------------------------------------- memory helpers

def _status_kib(*fields):
    values = dict.fromkeys(fields, 0)
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in values:
            values[key] = int(line.split()[1])
    return [values[f] for f in fields]


def _reset_peak_rss():
    """VmHWM := current RSS (Linux: write 5 to clear_refs); silently a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class _Sampler:
    """Largest RssAnon / RssFile / VmRSS seen every `interval` seconds while running, overall
    (``peak``) and per phase (``phase_anon``: name -> largest RssAnon)."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.peak = [0, 0, 0]
        self.phase_anon = {}
        self._phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def phase(self, name):
        self._sample()
        self._phase = name
        self._sample()

    def _sample(self):
        now = _status_kib("RssAnon", "RssFile", "VmRSS")
        self.peak = [max(a, b) for a, b in zip(self.peak, now)]
        self.phase_anon[self._phase] = max(self.phase_anon.get(self._phase, 0), now[0])

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- synthetic data

def _normalise(a):
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a


def build_distractors(path, count, dim, seed, dtype="float32"):
    """Random unit rows written into a .npy memmap block by block; returns seconds taken."""
    start = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))
    rng = np.random.default_rng(seed)
    for first in range(0, count, BUILD_ROWS):
        rows = min(BUILD_ROWS, count - first)
        out[first:first + rows] = _normalise(rng.standard_normal((rows, dim), dtype=np.float32))
    out.flush()
    del out
    return time.perf_counter() - start


def make_queries(nq, dim, n_db, seed):
    """Queries, a database with planted positives and revisitop-style ground truth (numpy)."""
    rng = np.random.default_rng(seed + 1)
    Q = _normalise(rng.standard_normal((nq, dim), dtype=np.float32))
    X = _normalise(rng.standard_normal((n_db, dim), dtype=np.float32))
    gnd = []
    for j in range(nq):
        ids = rng.permutation(n_db)
        easy, hard, junk = ids[:15], ids[15:40], ids[40:80]
        # cosine a with the query: easy clearly above random distractors (std ~ 1/sqrt(D)), hard
        # among the best of a million of them, junk anywhere in between
        for group, low, high in ((easy, 0.15, 0.5), (hard, 0.04, 0.12), (junk, 0.0, 0.2)):
            a = rng.uniform(low, high, size=(len(group), 1)).astype(np.float32)
            X[group] = _normalise(a * Q[j] + np.sqrt(1 - a ** 2) * X[group])
        gnd.append({"easy": easy, "hard": hard, "junk": junk})
    return Q, X, gnd


# --------------------------------------------------------------------------- measured children

def _child(method, path, nq, dim, n_db, seed, device, chunk_rows, rerank_too, queue):
    try:
        queue.put(_measure(method, path, nq, dim, n_db, seed, device, chunk_rows, rerank_too))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _measure(method, path, nq, dim, n_db, seed, device, chunk_rows, rerank_too):
    import torch

    from test.data.gnd import protocols
    from test.r1m.search import wanted_from_protocols

    device = torch.device(device)
    Qn, Xn, gnd = make_queries(nq, dim, n_db, seed)
    protos = protocols(gnd)
    wanted = wanted_from_protocols(protos)
    Q, X = torch.from_numpy(Qn).to(device), torch.from_numpy(Xn).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.zeros(64, 64, device=device) @ torch.zeros(64, 64, device=device)   # start the BLAS / context
    _reset_peak_rss()
    anon0, rss0 = _status_kib("RssAnon", "VmRSS")
    times = {}
    with _Sampler() as sampler:
        sampler.phase("search")
        if method == "onemeval":
            out = _onemeval(path, Q, X, dim, protos, wanted, chunk_rows, rerank_too, times, sync, sampler)
        else:
            out = _official(path, Q, X, protos, wanted, rerank_too, times, sync, sampler)
    hwm, = _status_kib("VmHWM")
    out.update({f"{k}_s": round(v, 3) for k, v in times.items()})
    out["peak_rss_extra_mib"] = round((hwm - rss0) / 1024, 1)
    out["peak_anon_extra_mib"] = round((sampler.peak[0] - anon0) / 1024, 1)
    for phase in ("search", "rerank"):
        if phase in sampler.phase_anon:
            out[f"peak_anon_extra_{phase}_mib"] = round((sampler.phase_anon[phase] - anon0) / 1024, 1)
    out["peak_file_rss_mib"] = round(sampler.peak[1] / 1024, 1)
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    out["threads"] = torch.get_num_threads()
    return out


def _timed(times, name, sync, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    sync()
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
    return value


def _onemeval(path, Q, X, dim, protos, wanted, chunk_rows, rerank_too, times, sync, sampler):
    from test.r1m.features import load_r1m_features, scan_rows
    from test.r1m.search import evaluate_from_search, rerank_top, search_with_r1m

    matrix, info = _timed(times, "load", sync, load_r1m_features, path, dim=dim, scan=False)
    _timed(times, "scan", sync, scan_rows, matrix, path)
    result = _timed(times, "search", sync, search_with_r1m, Q, X, matrix, KEEP, wanted,
                    chunk_rows=chunk_rows)
    res = _timed(times, "evaluate", sync, evaluate_from_search, result, protos)
    out = {"chunk_rows": result.chunk_rows, "map": _maps(res)}
    if rerank_too:
        sampler.phase("rerank")
        block = _timed(times, "rerank", sync, rerank_top, Q, X, matrix, result, M=M, K=K, beta=BETA)
        out["map_rerank"] = _maps(evaluate_from_search(result, protos, reranked_top=block))
    out["positions"] = [p.tolist() for p in result.positions]
    return out


def _official(path, Q, X, protos, wanted, rerank_too, times, sync, sampler):
    """The official way: everything in memory, full similarity matrix, full argsort."""
    import torch

    from modules.reranking import rerank
    from test.retrieval.evaluate import evaluate_revisitop

    def concat():
        return torch.cat([X, torch.from_numpy(np.load(path)).to(X.device)])   # two copies, as torch.load + cat

    X_all = _timed(times, "load", sync, concat)
    ranks = _timed(times, "search", sync,
                   lambda: torch.sort(X_all @ Q.T, dim=0, descending=True, stable=True).indices)
    ranks_np = ranks.cpu().numpy()
    res = _timed(times, "evaluate", sync, evaluate_revisitop, ranks_np, protos)
    out = {"map": _maps(res)}
    if rerank_too:
        sampler.phase("rerank")
        reranked = _timed(times, "rerank", sync, rerank, Q, X_all, ranks, M=M, K=K, beta=BETA)
        out["map_rerank"] = _maps(evaluate_revisitop(reranked.cpu().numpy(), protos))
    inverse = np.empty_like(ranks_np)
    np.put_along_axis(inverse, ranks_np, np.arange(len(ranks_np))[:, None], axis=0)
    out["positions"] = [inverse[w, j].tolist() for j, w in enumerate(wanted)]
    return out


def _maps(results):
    return {name: results[name]["map"] for name in "EMH"}


def _run_child(*args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


# --------------------------------------------------------------------------- driver

def run_benchmark(sizes=(200_000,), nq=70, dim=2048, device="cpu", n_db=N_DB, workdir=None, seed=0,
                  chunk_rows=None, full_max=0, rerank_too=True, dtype="float32", keep_files=False,
                  repeat=1, log=print):
    """One row (a flat dict) per size; see the module docstring. With ``repeat`` > 1 the onemeval
    child runs that many times: times are the fastest run's (``*_s``), memory the largest (``*_mib``),
    and ``search_s_all`` lists every run's search time."""
    rows = []
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="onemeval_bench_")
        workdir = tmp
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for size in sizes:
            need = size * dim * np.dtype(dtype).itemsize
            free = shutil.disk_usage(workdir).free
            if need + 2 ** 30 > free:
                rows.append({"distractors": size, "error": f"needs {need / 2**30:.1f} GiB on {workdir}, "
                             f"{free / 2**30:.1f} GiB free (use --workdir)"})
                continue
            path = workdir / f"distractors_{size}x{dim}_{dtype}_seed{seed}.npy"
            build_s = None
            if not path.is_file():
                log(f"building {path} ({need / 2**30:.2f} GiB) ...")
                build_s = round(build_distractors(path, size, dim, seed, dtype), 1)
            log(f"measuring onemeval search, {size} distractors ({repeat} run(s)) ...")
            ours = _best([_run_child("onemeval", str(path), nq, dim, n_db, seed, device, chunk_rows, rerank_too)
                          for _ in range(repeat)])
            row = {"distractors": size, "dtype": dtype, "file_gib": round(need / 2**30, 2), "build_s": build_s}
            if "error" in ours:
                rows.append({**row, "error": ours["error"]})
                continue
            positions = ours.pop("positions")
            row.update(_flatten(ours))
            if size <= full_max:
                log(f"measuring the official full concatenate + argsort, {size} distractors ...")
                full = _run_child("official", str(path), nq, dim, n_db, seed, device, None, rerank_too)
                if "error" in full:
                    row["full_error"] = full["error"]
                else:
                    full_positions = full.pop("positions")
                    row.update({f"full_{k}": v for k, v in _flatten(full).items()})
                    diff = np.concatenate([np.asarray(a) - np.asarray(b) for a, b in zip(positions, full_positions)])
                    row["positions_differing"] = int(np.count_nonzero(diff))
                    row["positions_total"] = int(diff.size)
                    row["max_position_shift"] = int(np.abs(diff).max()) if diff.size else 0
            rows.append(row)
            if not keep_files and tmp is not None:
                path.unlink(missing_ok=True)
    finally:
        if tmp is not None and not keep_files:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _best(runs):
    """Fastest times, largest memory over repeated runs (results are identical between runs)."""
    errors = [r for r in runs if "error" in r]
    if errors:
        return errors[0]
    best = dict(runs[0])
    for key in best:
        if key.endswith("_s"):
            best[key] = min(r[key] for r in runs)
        elif key.endswith("_mib"):
            best[key] = max(r[key] for r in runs)
    if len(runs) > 1:
        best["search_s_all"] = [r["search_s"] for r in runs]
    return best


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


COLUMNS = ["distractors", "scan_s", "search_s", "evaluate_s", "rerank_s", "peak_anon_extra_search_mib",
           "peak_anon_extra_rerank_mib", "peak_rss_extra_mib", "map_M", "map_rerank_M",
           "full_load_s", "full_search_s", "full_peak_anon_extra_mib", "full_map_M", "full_map_rerank_M",
           "positions_differing"]


def table(rows, columns=COLUMNS):
    columns = [c for c in columns if any(c in r for r in rows)] + (["error"] if any("error" in r for r in rows) else [])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
        return "" if v is None else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[200_000, 1_000_000])
    parser.add_argument("--nq", type=int, default=70)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n-db", type=int, default=N_DB)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the search runs there)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per block (default: automatic)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--full-max", type=int, default=0,
                        help="also run the official full method for sizes <= this (needs the whole matrix in RAM)")
    parser.add_argument("--no-rerank", action="store_true", help="skip the top-M reranking")
    parser.add_argument("--workdir", default=None, help="where the .npy files go (default: a temporary dir)")
    parser.add_argument("--keep-files", action="store_true", help="keep (and reuse) the .npy files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="run the onemeval measurement this many times "
                        "(fastest time, largest memory)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    import torch

    rows = run_benchmark(sizes=args.sizes, nq=args.nq, dim=args.dim, device=args.device, n_db=args.n_db,
                         workdir=args.workdir, seed=args.seed, chunk_rows=args.chunk_rows,
                         full_max=args.full_max, rerank_too=not args.no_rerank, dtype=args.dtype,
                         keep_files=args.keep_files, repeat=args.repeat)
    print(table(rows))
    if args.json:
        report = {"host": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
                  "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
