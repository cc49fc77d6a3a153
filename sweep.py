"""Ablation sweep of SuperGlobal reranking over M, K and beta on saved features: table, CSV, JSON, plots.

    python sweep.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl \\
        --M 100,200,400,800 --K 1,3,5,9,15 --beta 0.05,0.1,0.15,0.3 --out-dir sweep_out

Features and ranks as in rerank_features.py (the TEST.SAVE_FEATURES npz of test.py, or --query / --db
/ --ranks); the ground truth is a revisitop gnd_*.pkl, or a custom .csv / .json with --images.
Writes <out-dir>/sweep.csv and sweep.json, and with matplotlib the PNG plots mAP_vs_M, mAP_vs_K,
mAP_vs_beta (the other two parameters at the config defaults M=400, K=9, beta=0.15 when those are in
the grid, else at the best grid point) and heatmap_K_beta. Each grid point equals a single
rerank_features.py run with that M, K and beta; --check-single proves it on your data and times it.
See docs/sweep.md.
"""

from errors import quiet_interrupt_during_startup

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

import importlib.util
import stat
import sys
import time
from pathlib import Path

import torch

from errors import ArgumentParser, ExamplesHelpFormatter, UserError, exit_code_of, exit_with
from test.data.feature_files import load_features, load_ground_truth
from test.outputs.writer import atomic_write, json_bytes, refuse_input, register_input, temp_name

OUTPUTS = ("sweep.csv", "sweep.json")
PLOTS = tuple(f"mAP_vs_{p}.png" for p in ("M", "K", "beta")) + ("heatmap_K_beta.png",)  # test/retrieval/sweep_plots.py


EXAMPLES = """examples:
  # the default grid on test.py's TEST.SAVE_FEATURES npz; writes sweep_out/
  python sweep.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl
  # one grid point: the mAP of test.py's own reranking
  python sweep.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl \\
      --M 400 --K 9 --beta 0.15
  # a smaller grid; the table, CSV and JSON only
  python sweep.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl \\
      --M 50,100,200 --K 3,9 --beta 0.15 --out-dir sweep_small --no-plots
  # your own features with a custom ground truth (docs/custom_data.md)
  python sweep.py --query Q.npy --db X.npy --gnd my_photos/gt.csv --images my_photos
  # also rerank each grid point alone: the same mAPs, both times printed
  python sweep.py --features out/roxford5k.npz --gnd revisitop/roxford5k/gnd_roxford5k.pkl --check-single

See docs/sweep.md."""


def parse_args(argv):
    from test.retrieval.rerank_sweep import parse_grid

    p = ArgumentParser(prog="sweep.py", description=__doc__.split("\n")[0], allow_abbrev=False,
                       formatter_class=ExamplesHelpFormatter, epilog=EXAMPLES)
    p.add_argument("--features", help="test.py TEST.SAVE_FEATURES npz (Q, X, ranks_global, ranks)")
    p.add_argument("--query", help="query features (.npy / .npz), nq x D")
    p.add_argument("--db", help="database features (.npy / .npz), N x D")
    p.add_argument("--ranks", help="initial ranks (.npy, N' x nq); default: the npz's ranks_global or X Q^T")
    p.add_argument("--gnd", help="ground truth: revisitop gnd_*.pkl, or custom .csv / .json (needs --images)")
    p.add_argument("--images", help="image folder of a custom .csv / .json ground truth (database order)")
    p.add_argument("--M", default="100,200,400,800", help="comma-separated M values (top items reranked)")
    p.add_argument("--K", default="1,3,5,9,15", help="comma-separated K values (neighbours per descriptor)")
    p.add_argument("--beta", default="0.05,0.1,0.15,0.3", help="comma-separated beta values (neighbour weight)")
    p.add_argument("--out-dir", default="sweep_out", help="folder for sweep.csv, sweep.json and the PNGs")
    p.add_argument("--no-plots", action="store_true", help="write only the table, CSV and JSON")
    p.add_argument("--check-single", action="store_true",
                   help="also run one rerank + evaluation per grid point, check that the mAPs are identical "
                        "and print both times")
    args = p.parse_args(argv)
    if args.features and (args.query or args.db):
        raise UserError("give either --features or --query and --db, not both")
    if not args.features and not (args.query and args.db):
        raise UserError("no features: give --features FILE.npz, or --query FILE and --db FILE")
    if not args.gnd:
        raise UserError("no ground truth: give --gnd (a revisitop gnd_*.pkl, or a custom .csv / .json with --images)")
    args.grid = parse_grid(args.M, args.K, args.beta)
    args.gldv2 = None  # test.data.feature_files reads it; GLDv2 sweeps are not supported
    return args


def plots_wanted(args):
    """The PNGs will be written: not --no-plots, and matplotlib is installed."""
    if args.no_plots:
        return False
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or blocked install: run() says plots need matplotlib
        return False


def check_outputs(args):
    """Before any work: every input is registered and no output would land on one; the output folder
    can be created and written, and no output name is taken by a directory (the rename would fail
    after the earlier outputs were written, leaving a partial set)."""
    out_dir = Path(args.out_dir)
    for flag in ("features", "query", "db", "ranks", "gnd", "images"):
        if getattr(args, flag):
            register_input(getattr(args, flag), "--" + flag)
    for name in OUTPUTS + (PLOTS if plots_wanted(args) else ()):
        refuse_input(out_dir / name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out-dir {out_dir}: {error.strerror}") from None
    probe = temp_name(out_dir / OUTPUTS[0])  # a real file, not os.access: root ignores permission bits
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write into --out-dir {out_dir}: {error.strerror}; "
                        "choose a writable --out-dir") from None
    for name in OUTPUTS + (PLOTS if plots_wanted(args) else ()):
        path = out_dir / name
        try:
            taken = stat.S_ISDIR(path.lstat().st_mode)  # a symbolic link is replaced, not followed
        except FileNotFoundError:
            continue
        except OSError as error:
            raise UserError(f"cannot write {path} (--out-dir): {error.strerror}") from None
        if taken:
            raise UserError(f"cannot write {path} (--out-dir): it is a directory; remove or rename it, or choose "
                            "another --out-dir")
    return out_dir


def check_single(Q, X, ranks, protos, result):
    """One rerank + evaluation per grid point (what 100 rerank_features.py runs would do, minus loading):
    returns its seconds; raises if any mAP differs from the sweep's."""
    from modules.reranking import rerank
    from test.retrieval.evaluate import evaluate_revisitop
    from test.retrieval.rerank_sweep import map_percent

    start = time.perf_counter()
    for record in result["records"]:
        new = rerank(Q, X, ranks, M=record["M"], K=record["K"], beta=record["beta"], columns_are_queries=True)
        single = map_percent(evaluate_revisitop(new.numpy(), protos))
        if any(single[k] != record[k] for k in single):
            raise RuntimeError(f"sweep and single run differ at M={record['M']} K={record['K']} "
                               f"beta={record['beta']}: {single} vs {record}")
    return time.perf_counter() - start


def run(args):
    """Rerank saved features for every (M, K, beta) of the grid and write the table, CSV, JSON and plots."""
    from config import get_cfg_defaults
    from test.retrieval.rerank_sweep import anchor, csv_text, format_table, run_sweep
    from test.retrieval.similarity import rank_by_similarity

    out_dir = check_outputs(args)
    Q, X, ranks = load_features(args)
    protos = load_ground_truth(args, Q.shape[0], X.shape[0])
    Qt, Xt = torch.from_numpy(Q), torch.from_numpy(X)
    initial = rank_by_similarity(Xt, Qt) if ranks is None else torch.from_numpy(ranks)
    Ms, Ks, betas = args.grid
    if initial.shape[0] < min(max(Ms), X.shape[0]):
        raise UserError(f"--ranks has {initial.shape[0]} positions per query but the largest --M is {max(Ms)} (the "
                        f"database has {X.shape[0]} items): give the top {max(Ms)} or more, or --M values up to "
                        f"{initial.shape[0]}")
    print(f"features: {Q.shape[0]} queries, {X.shape[0]} database, D={Q.shape[1]}; initial ranking: "
          f"{'given' if ranks is not None else 'X Q^T'} ({initial.shape[0]} rows); "
          f"{len(Ms) * len(Ks) * len(betas)} settings", flush=True)
    start = time.perf_counter()
    result = run_sweep(Qt, Xt, initial, protos, Ms, Ks, betas)
    result["seconds"]["total"] = time.perf_counter() - start
    print(format_table(result))
    seconds = result["seconds"]
    print(f"sweep of {len(result['records'])} settings: {seconds['total']:.2f} s "
          f"(rerank {seconds['rerank']:.2f} s, evaluate {seconds['evaluate']:.2f} s)", flush=True)
    if args.check_single:
        single = check_single(Qt, Xt, initial, protos, result)
        result["seconds"]["single_runs"] = single
        print(f"check: {len(result['records'])} single rerank + evaluate runs give identical mAPs; they took "
              f"{single:.2f} s, {single / seconds['total']:.1f}x the sweep", flush=True)
    supg = get_cfg_defaults().SupG
    fixed = anchor(result["records"], {"M": supg.M, "K": supg.K, "beta": supg.beta})
    result.update(grid={"M": Ms, "K": Ks, "beta": betas}, plots_fixed=fixed,
                  inputs={k: getattr(args, k) for k in ("features", "query", "db", "ranks", "gnd", "images")})
    atomic_write(out_dir / "sweep.csv", csv_text(result).encode())
    atomic_write(out_dir / "sweep.json", json_bytes(result))
    print(f"wrote {out_dir / 'sweep.csv'} and {out_dir / 'sweep.json'}", flush=True)
    if args.no_plots:
        return
    try:
        from test.retrieval.sweep_plots import plot_sweep

        paths = plot_sweep(result, out_dir, fixed)
    except ImportError:
        print("plots need matplotlib: pip install -r requirements-demo.txt (CSV and JSON are written)", flush=True)
        return
    print(f"plots (line plots at {', '.join(f'{k}={v:g}' for k, v in fixed.items())}): "
          + ", ".join(str(p) for p in paths), flush=True)


def main(argv=None):
    """Command-line entry point of sweep.py; returns the exit code (0, 2, 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return exit_code_of(lambda: run(parse_args(argv)), {"SupG.beta": "--beta"})  # the grid's flag


if __name__ == "__main__":
    exit_with(main())
