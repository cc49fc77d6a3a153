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

from errors import quiet_interrupt_during_startup

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

from config import get_cfg_defaults, load_cfg_from_args
from errors import ArgumentParser, ExamplesHelpFormatter, UserError, exit_code_of, exit_with, typed_flags
from test.data.feature_files import load_features, load_gldv2_checked, load_ground_truth_lists
from test.data.gnd import protocols
from test.extraction.device import resolve_device
from test.extraction.runtime import tune_process
from test.outputs.writer import atomic_write, refuse_input, register_input, save_npy

METHODS = {
    "none": "the initial ranking",
    "supg": "SuperGlobal reranking (MDescAug + RerankwMDA)",
    "aqe": "alpha-QE",
    "dba": "alpha-DBA",
    "dba+aqe": "alpha-DBA, then alpha-QE",
}


def take_reranking_config(args, opts):
    """M, K, beta from the one config: defaults, then --cfg and trailing KEY VALUE pairs, then the
    --M/--K/--beta aliases (checked by config.validate like every other key)."""
    stray = [o for o in opts if o.startswith("-")]
    if stray:
        raise UserError(f"unrecognized arguments: {stray[0]} (python rerank_features.py --help lists the options)")
    cfg = load_cfg_from_args((["--cfg", args.cfg] if args.cfg else []) + opts, aliases=[
        ("SupG.M", args.M, "--M"), ("SupG.K", args.K, "--K"), ("SupG.beta", args.beta, "--beta")])
    args.M, args.K, args.beta = cfg.SupG.M, cfg.SupG.K, cfg.SupG.beta


EXAMPLES = """examples:
  # SuperGlobal reranking of test.py's TEST.SAVE_FEATURES npz, with the official result lines
  python rerank_features.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl
  # the initial ranking, SuperGlobal and the classic baselines side by side
  python rerank_features.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl \\
      --methods none,supg,aqe,dba,dba+aqe
  # other reranking parameters (the same as SupG.M 200 SupG.K 5 SupG.beta 0.1)
  python rerank_features.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl \\
      --M 200 --K 5 --beta 0.1
  # your own features, no ground truth: write each query's reranked top 50
  python rerank_features.py --query Q.npy --db X.npy --out top.csv --topk 50
  # GLDv2 mAP@100 (Public, Private, All)
  python rerank_features.py --features out/gldv2.npz --gldv2 /data/gldv2

Trailing KEY VALUE pairs set config keys (e.g. SupG.M 200); --cfg FILE reads a config.yaml that
test.py wrote. --M, --K and --beta stand for SupG.M, SupG.K, SupG.beta. See docs/feature_rerank.md."""


def parse_args(argv):
    from test.retrieval.baselines import DBA_ALPHA, DBA_K, QE_ALPHA, QE_N

    defaults = get_cfg_defaults().SupG
    p = ArgumentParser(prog="rerank_features.py", description=__doc__.split("\n")[0], allow_abbrev=False,
                       formatter_class=ExamplesHelpFormatter, epilog=EXAMPLES)
    p.add_argument("--features", help="test.py TEST.SAVE_FEATURES npz (Q, X, ranks_global, ranks)")
    p.add_argument("--query", help="query features (.npy / .npz), nq x D")
    p.add_argument("--db", help="database features (.npy / .npz), N x D")
    p.add_argument("--ranks", help="initial ranks (.npy, N' x nq); default: the npz's ranks_global or X Q^T")
    p.add_argument("--methods", default="supg", help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--M", type=int, help=f"SuperGlobal: top M reranked (SupG.M, default {defaults.M})")
    p.add_argument("--K", type=int, help=f"SuperGlobal: neighbours per descriptor (SupG.K, default {defaults.K})")
    p.add_argument("--beta", type=float, help=f"SuperGlobal: neighbour weight (SupG.beta, default {defaults.beta})")
    p.add_argument("--cfg", help="a test.py config.yaml: its SupG.M, SupG.K, SupG.beta")
    p.add_argument("--qe-n", type=int, default=QE_N, help="alpha-QE: top database items added to the query")
    p.add_argument("--qe-alpha", type=float, default=QE_ALPHA, help="alpha-QE: similarity power")
    p.add_argument("--qe-exclude-query", action="store_true",
                   help="alpha-QE: q' from the top n only, without q itself")
    p.add_argument("--dba-k", type=int, default=DBA_K, help="alpha-DBA: neighbours added to each item")
    p.add_argument("--dba-alpha", type=float, default=DBA_ALPHA, help="alpha-DBA: similarity power")
    p.add_argument("--gnd", help="ground truth: revisitop gnd_*.pkl, or custom .csv / .json (needs --images)")
    p.add_argument("--images", help="image folder of a custom .csv / .json ground truth (database order)")
    p.add_argument("--gldv2", help="GLDv2 retrieval root: evaluate mAP@100 (Public/Private/All); features "
                                   "in the order of test.data.gldv2.load_gldv2 (index ids, scored test ids)")
    p.add_argument("--gldv2-solution", help="GLDv2 solution csv (default <root>/retrieval_solution_v2.1.csv)")
    p.add_argument("--out", help="write the reranked top --topk: .npy or .csv (one file per method, "
                                 "named <stem>.<method><ext>, when several methods run)")
    p.add_argument("--topk", type=int, default=100, help="rank positions written with --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args, opts = p.parse_known_args(argv)
    take_reranking_config(args, opts)
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
    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    for name in ("qe_n", "dba_k"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("qe_alpha", "dba_alpha"):
        if not np.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0")
    return args


# --------------------------------------------------------------------------- methods

def run_method(method, Q, X, initial, args):
    from modules.reranking import rerank
    from test.retrieval.baselines import dba_qe_ranks, dba_ranks, qe_ranks

    if method == "none":
        return initial
    if method == "supg":
        if initial.shape[0] < min(args.M, X.shape[0]):
            raise UserError(f"--ranks has {initial.shape[0]} positions per query but --M is {args.M} (the database "
                            f"has {X.shape[0]} items): give the top M or more, or --M {initial.shape[0]} to rerank "
                            "only those")
        return rerank(Q, X, initial, M=args.M, K=args.K, beta=args.beta, columns_are_queries=True)
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


def write_ranks(path, ranks, topk, names=None):
    """The top `topk` rows of `ranks` as .npy (topk x nq int64) or .csv, one row per (query, rank):
    query,rank,db_index, plus query_name and db_name when the ground truth names the images."""
    top = np.ascontiguousarray(ranks[:topk])
    if path.suffix.lower() != ".csv":
        save_npy(path, top, " (--out)")
        return
    query, rank = np.meshgrid(np.arange(top.shape[1]), np.arange(top.shape[0]), indexing="ij")
    columns = {"query": query.ravel(), "rank": rank.ravel(), "db_index": top.T.ravel()}
    if names is not None:
        db_names, query_names = np.asarray(names[0], dtype=object), np.asarray(names[1], dtype=object)
        columns = {"query": columns["query"], "query_name": query_names[columns["query"]],
                   "rank": columns["rank"], "db_index": columns["db_index"],
                   "db_name": db_names[columns["db_index"]]}
    table = np.column_stack([values.astype(str) for values in columns.values()])

    def write(handle):  # csv quotes names holding commas or quotes
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(table.tolist())
        text.flush()
        text.detach()
    atomic_write(path, write, " (--out)")


def register_inputs(args):
    """Every file and folder this run reads, so that no output lands on one of them."""
    for flag in ("features", "query", "db", "ranks", "gnd", "images", "gldv2", "gldv2_solution"):
        if getattr(args, flag, None):
            register_input(getattr(args, flag), "--" + flag.replace("_", "-"))


def run(args):
    """Rerank saved features with each requested method, then evaluate them or write the top-k."""
    from test.retrieval.evaluate import evaluate_revisitop, format_results
    from test.retrieval.similarity import rank_by_similarity

    if args.out and Path(args.out).suffix.lower() not in (".npy", ".csv"):
        raise UserError(f"--out {args.out}: use a .npy or .csv file name")
    device = resolve_device(args.device, "--device")
    register_inputs(args)
    if args.out:  # before any work: an --out naming an input would destroy it
        for method in args.methods:
            refuse_input(out_path(args.out, method, len(args.methods) > 1))
    Q, X, ranks = load_features(args)
    protos, names = None, None
    if args.gnd:
        db_names, query_names, entries = load_ground_truth_lists(args, Q.shape[0], X.shape[0])
        protos, names = protocols(entries), (db_names, query_names)
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
            from test.data.gldv2 import evaluate_gldv2, format_gldv2

            print(format_gldv2(evaluate_gldv2(new, gld)), flush=True)
        if args.out:
            path = out_path(args.out, method, len(args.methods) > 1)
            write_ranks(path, new, args.topk, names)
            print(f"wrote the top {min(args.topk, new.shape[0])} of {new.shape[1]} queries to {path}", flush=True)


def main(argv=None):
    """Command-line entry point of rerank_features.py; returns the exit code (0, 2, 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    return exit_code_of(lambda: run(parse_args(argv)),
                        typed_flags({"--M": "SupG.M", "--K": "SupG.K", "--beta": "SupG.beta"}, argv))


if __name__ == "__main__":
    exit_with(main())
