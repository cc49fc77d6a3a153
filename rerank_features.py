"""Rerank saved global features, no model and no images: SuperGlobal reranking and classic baselines.

    python rerank_features.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl
    python rerank_features.py --query Q.npy --db X.npy --methods supg,aqe,dba,dba+aqe --out top.csv

Inputs: the ``TEST.SAVE_FEATURES`` npz of test.py (Q, X, ranks_global, ranks), or --query / --db
(.npy, or .npz with one array / key Q resp. X). The initial ranking is --ranks (.npy, N' x nq,
revisitop orientation: column j ranks the database for query j), else the npz's ranks_global, else
the plain ranking by X Q^T. With --gnd (a revisitop gnd_*.pkl, or a custom .csv/.json ground truth
with --images, see docs/custom_data.md) each method prints the official result lines; with --out
the reranked top --topk of each method is written (.npy: topk x nq int64; .csv: query,rank,db_index).
See docs/feature_rerank.md.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from errors import UserError, exit_code_of
from test.runtime import tune_process

METHODS = {
    "none": "the initial ranking",
    "supg": "SuperGlobal reranking (MDescAug + RerankwMDA)",
    "aqe": "alpha-QE",
    "dba": "alpha-DBA",
    "dba+aqe": "alpha-DBA, then alpha-QE",
}


def parse_args(argv):
    from test.baselines import DBA_ALPHA, DBA_K, QE_ALPHA, QE_N

    p = argparse.ArgumentParser(prog="rerank_features.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", help="test.py TEST.SAVE_FEATURES npz (Q, X, ranks_global, ranks)")
    p.add_argument("--query", help="query features (.npy / .npz), nq x D")
    p.add_argument("--db", help="database features (.npy / .npz), N x D")
    p.add_argument("--ranks", help="initial ranks (.npy, N' x nq); default: the npz's ranks_global or X Q^T")
    p.add_argument("--methods", default="supg", help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--M", type=int, default=400, help="SuperGlobal: top M reranked")
    p.add_argument("--K", type=int, default=9, help="SuperGlobal: neighbours per descriptor")
    p.add_argument("--beta", type=float, default=0.15, help="SuperGlobal: neighbour weight")
    p.add_argument("--qe-n", type=int, default=QE_N, help="alpha-QE: top database items added to the query")
    p.add_argument("--qe-alpha", type=float, default=QE_ALPHA, help="alpha-QE: similarity power")
    p.add_argument("--qe-exclude-query", action="store_true",
                   help="alpha-QE: q' from the top n only, without q itself")
    p.add_argument("--dba-k", type=int, default=DBA_K, help="alpha-DBA: neighbours added to each item")
    p.add_argument("--dba-alpha", type=float, default=DBA_ALPHA, help="alpha-DBA: similarity power")
    p.add_argument("--gnd", help="ground truth: revisitop gnd_*.pkl, or custom .csv / .json (needs --images)")
    p.add_argument("--images", help="image folder of a custom .csv / .json ground truth (database order)")
    p.add_argument("--gldv2", help="GLDv2 retrieval root: evaluate mAP@100 (Public/Private/All); features "
                                   "in the order of test.gldv2.load_gldv2 (index ids, scored test ids)")
    p.add_argument("--gldv2-solution", help="GLDv2 solution csv (default <root>/retrieval_solution_v2.1.csv)")
    p.add_argument("--out", help="write the reranked top --topk: .npy or .csv (one file per method, "
                                 "named <stem>.<method><ext>, when several methods run)")
    p.add_argument("--topk", type=int, default=100, help="rank positions written with --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise UserError(f"unknown method(s) {unknown} in --methods: choose from {', '.join(METHODS)}")
    if args.features and (args.query or args.db):
        raise UserError("give either --features or --query and --db, not both")
    if not args.features and not (args.query and args.db):
        raise UserError("no features: give --features FILE.npz, or --query FILE and --db FILE")
    if not args.gnd and not args.gldv2 and not args.out:
        raise UserError("nothing to do: give --gnd or --gldv2 to evaluate and/or --out to write the reranked ranks")
    if args.gnd and args.gldv2:
        raise UserError("give --gnd or --gldv2, not both")
    for name in ("M", "topk"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("K", "qe_n", "dba_k"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.K >= args.M:
        raise UserError(f"--K ({args.K}) must be below --M ({args.M})")
    for name in ("beta", "qe_alpha", "dba_alpha"):
        if not np.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0")
    return args


# --------------------------------------------------------------------------- loading

def _open(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises many types on foreign bytes
        raise UserError(f"cannot read {path} as .npy / .npz ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:160]})") from None


def load_array(path, key=None):
    """An array from .npy, or from .npz (``key`` when present, else its only array)."""
    data = _open(path)
    if isinstance(data, np.ndarray):
        return data
    with data:
        if key is not None and key in data.files:
            return data[key]
        if len(data.files) == 1:
            return data[data.files[0]]
        raise UserError(f"{path} holds {data.files}: expected key {key!r} or a single array")


def load_features(args):
    """(Q, X, initial ranks or None) as numpy arrays, checked."""
    ranks = None
    if args.features:
        data = _open(args.features)
        if isinstance(data, np.ndarray) or "Q" not in data.files or "X" not in data.files:
            raise UserError(f"{args.features} is not a test.py features file: expected an npz with Q and X")
        with data:
            Q, X = data["Q"], data["X"]
            if "ranks_global" in data.files and not args.ranks:
                ranks = data["ranks_global"]
                if ranks.ndim == 2 and ranks.shape[0] != X.shape[0]:
                    # test.py saves full rankings, except with SupG.onemeval (top TEST.TOPK over X + R1M)
                    raise UserError(f"{args.features} holds the top {ranks.shape[0]} of a ranking over more "
                                    f"than its {X.shape[0]} database features (a SupG.onemeval run): the R1M "
                                    "distractors are not in it, so it cannot be reranked from Q and X alone")
    else:
        Q, X = load_array(args.query, "Q"), load_array(args.db, "X")
    if args.ranks:
        ranks = load_array(args.ranks, "ranks_global")
    for name, a in (("query", Q), ("database", X)):
        if a.ndim != 2 or a.dtype.kind != "f":
            raise UserError(f"{name} features must be a 2-D float array, got shape {a.shape} dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise UserError(f"{name} features contain NaN or infinite values")
    if Q.shape[1] != X.shape[1]:
        raise UserError(f"query and database features differ in size: {Q.shape[1]} vs {X.shape[1]}")
    if ranks is not None:
        ranks = check_ranks(ranks, Q.shape[0], X.shape[0])
    return Q, X, ranks


def check_ranks(ranks, nq, n):
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise UserError(f"ranks must be a 2-D integer array (N' x nq), got shape {ranks.shape} dtype {ranks.dtype}")
    if ranks.shape[1] != nq and ranks.shape[0] == nq:
        ranks = ranks.T  # query-major (nq x N'): unambiguous, accept it
    if ranks.shape[1] != nq:
        raise UserError(f"ranks have {ranks.shape[1]} columns for {nq} queries (expected N' x nq)")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= n):
        raise UserError(f"ranks hold database index {int(ranks.max())} but there are only {n} database "
                        "features (ranks of a SupG.onemeval run index the R1M distractors too: "
                        "they cannot be reranked from Q and X alone)")
    return np.ascontiguousarray(ranks.astype(np.int64))


def load_ground_truth(args, nq, n):
    """(protocols, label) for --gnd; sizes must match the features."""
    from test.gnd import protocols, safe_load_pickle, validate_gnd

    path = Path(args.gnd)
    if path.suffix.lower() in (".csv", ".json"):
        if not args.images:
            raise UserError(f"{path} is a custom ground truth: give its image folder with --images")
        from test.custom_dataset import load_custom_dataset

        gnd = load_custom_dataset(args.images, path)
        imlist, qimlist, entries = gnd.imlist, gnd.qimlist, gnd.gnd
    else:
        imlist, qimlist, entries = validate_gnd(safe_load_pickle(path), path)
    if len(qimlist) != nq or len(imlist) != n:
        raise UserError(f"{path} has {len(qimlist)} queries and {len(imlist)} database images but the "
                        f"features have {nq} and {n}")
    return protocols(entries)


def load_gldv2_checked(args, nq, n):
    from test.gldv2 import load_gldv2

    gld = load_gldv2(args.gldv2, args.gldv2_solution)
    if len(gld.query_ids) != nq or len(gld.index_ids) != n:
        raise UserError(f"{args.gldv2} has {len(gld.query_ids)} scored queries and {len(gld.index_ids)} index "
                        f"images but the features have {nq} and {n}")
    return gld


# --------------------------------------------------------------------------- methods

def run_method(method, Q, X, initial, args):
    from modules.reranking import rerank
    from test.baselines import dba_qe_ranks, dba_ranks, qe_ranks

    if method == "none":
        return initial
    if method == "supg":
        return rerank(Q, X, initial, M=args.M, K=args.K, beta=args.beta)
    if method == "aqe":
        return qe_ranks(Q, X, initial, args.qe_n, args.qe_alpha, not args.qe_exclude_query)
    if method == "dba":
        return dba_ranks(Q, X, args.dba_k, args.dba_alpha)
    return dba_qe_ranks(Q, X, args.dba_k, args.dba_alpha, args.qe_n, args.qe_alpha, not args.qe_exclude_query)


def describe(method, args):
    params = {"supg": f"M={args.M} K={args.K} beta={args.beta}",
              "aqe": f"n={args.qe_n} alpha={args.qe_alpha}" + (" without q" if args.qe_exclude_query else ""),
              "dba": f"k={args.dba_k} alpha={args.dba_alpha}",
              "dba+aqe": f"k={args.dba_k} alpha={args.dba_alpha}, n={args.qe_n} alpha={args.qe_alpha}",
              "none": ""}[method]
    return f">> {method}: {METHODS[method]}" + (f" ({params})" if params else "")


def out_path(out, method, several):
    out = Path(out)
    return out.with_name(f"{out.stem}.{method}{out.suffix}") if several else out


def write_ranks(path, ranks, topk):
    top = np.ascontiguousarray(ranks[:topk])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix.lower() == ".csv":
            with open(tmp, "w") as handle:
                handle.write("query,rank,db_index\n")
                for q in range(top.shape[1]):
                    handle.write("".join(f"{q},{r},{int(i)}\n" for r, i in enumerate(top[:, q])))
        else:
            with open(tmp, "wb") as handle:
                np.save(handle, top)
        tmp.replace(path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror}") from None


def run(args):
    from test.evaluate import evaluate_revisitop, format_results
    from test.search import rank_by_similarity

    if args.out and Path(args.out).suffix.lower() not in (".npy", ".csv"):
        raise UserError(f"--out {args.out}: use a .npy or .csv file name")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"bad --device {args.device!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available here")
    Q, X, ranks = load_features(args)
    protos = load_ground_truth(args, Q.shape[0], X.shape[0]) if args.gnd else None
    gld = load_gldv2_checked(args, Q.shape[0], X.shape[0]) if args.gldv2 else None
    Qt, Xt = torch.from_numpy(Q).to(device), torch.from_numpy(X).to(device)
    initial = rank_by_similarity(Xt, Qt) if ranks is None else torch.from_numpy(ranks).to(device)
    print(f"features: {Q.shape[0]} queries, {X.shape[0]} database, D={Q.shape[1]}; initial ranking: "
          f"{'given' if ranks is not None else 'X Q^T'} ({initial.shape[0]} rows)", flush=True)
    for method in args.methods:
        start = time.perf_counter()
        new = run_method(method, Qt, Xt, initial, args).cpu().numpy()
        print(describe(method, args) + f" [{time.perf_counter() - start:.2f} s]", flush=True)
        if protos is not None:
            for line in format_results(evaluate_revisitop(new, protos)):
                print(line, flush=True)
        if gld is not None:
            from test.gldv2 import evaluate_gldv2, format_gldv2

            print(format_gldv2(evaluate_gldv2(new, gld)), flush=True)
        if args.out:
            path = out_path(args.out, method, len(args.methods) > 1)
            write_ranks(path, new, args.topk)
            print(f"wrote the top {min(args.topk, new.shape[0])} of {new.shape[1]} queries to {path}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    return exit_code_of(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
