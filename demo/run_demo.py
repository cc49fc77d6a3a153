"""Run test.py on the demo benchmark with EfficientNet-Lite0: the baseline, then SuperGlobal one step at
a time, and print the mAP table.

    python demo/run_demo.py --data-dir demo/data --out-dir demo/output

Each row is one `python test.py ...` run (printed before it runs, so it can be pasted); rows share
the feature cache, so a row that only turns reranking on extracts nothing. The last row also writes
pictures of the first queries (<out-dir>/pictures/demo/index.html) and saves its features; then
sweep.py sweeps the reranking's M, K and beta on them (<out-dir>/sweep/: CSV, JSON and plots).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# nan: a protocol with no positive for any query (e.g. no easy view in a small benchmark)
RESULT = re.compile(r"Retrieval results: mAP E: ([\d.]+|nan), M: ([\d.]+|nan), H: ([\d.]+|nan)")
OFF = {"gemp": False, "rgem": False, "sgem": False, "relup": False, "rerank": False}
# (row name, SupG switches turned on); each row adds one SuperGlobal component to the previous one.
ROWS = [("baseline: GeM p=3, mean over scales", []),
        ("+ GeM+ (p=4.6)", ["gemp"]),
        ("+ Regional-GeM", ["gemp", "rgem"]),
        ("+ Scale-GeM (max over scales)", ["gemp", "rgem", "sgem"]),
        ("+ ReLU+ (head activation)", ["gemp", "rgem", "sgem", "relup"]),
        ("+ reranking (full SuperGlobal)", ["gemp", "rgem", "sgem", "relup", "rerank"])]
# The sweep on the last row's features: the demo has 156 database images, so smaller M than the paper's.
SWEEP_GRID = ["--M", "25,50,100", "--K", "1,3,5,9", "--beta", "0.05,0.15,0.3"]


def parse_map(text):
    """(E, M, H) from the last `Retrieval results: mAP ...` line of `text`."""
    found = RESULT.findall(text)
    if not found:
        raise ValueError("no 'Retrieval results: mAP' line")
    return tuple(float(v) for v in found[-1])


def command(data_dir, out_dir, name, switches, extra=()):
    flags = {**OFF, **{s: True for s in switches}}
    return [sys.executable, str(ROOT / "test.py"), "MODEL.TYPE", "EFFICIENTNET_LITE0", "TEST.WEIGHTS", "auto",
            "TEST.DATA_DIR", str(data_dir), "TEST.DATASET_LIST", name, "OUT_DIR", str(out_dir),
            "TEST.NUM_WORKERS", "0", "TEST.BATCH_SIZE", "16",
            *[item for k, v in flags.items() for item in (f"SupG.{k}", str(v))], *extra]


def sweep_command(data_dir, out_dir, name):
    return [sys.executable, str(ROOT / "sweep.py"), "--features", str(out_dir / f"{name}.npz"),
            "--gnd", str(data_dir / name / f"gnd_{name}.pkl"), *SWEEP_GRID, "--out-dir", str(out_dir / "sweep")]


def format_table(rows):
    lines = [f"{'':<38} {'E':>6} {'M':>6} {'H':>6}"]
    lines += [f"{name:<38} {e:6.2f} {m:6.2f} {h:6.2f}" for name, (e, m, h) in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="demo/data")
    parser.add_argument("--out-dir", default="demo/output")
    parser.add_argument("--name", default="demo")
    parser.add_argument("--pictures", type=int, default=4, help="queries to draw in the last row")
    args = parser.parse_args()
    out_dir, data_dir = Path(args.out_dir).resolve(), Path(args.data_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "log.txt"
    start, cpu_start = time.time(), os.times()
    results = []
    for i, (row, switches) in enumerate(ROWS):
        last = i == len(ROWS) - 1
        extra = (["TEST.VIS_QUERIES", str(args.pictures)] if last and args.pictures else []) + \
            (["TEST.SAVE_FEATURES", "True"] if last else [])
        line = command(data_dir, out_dir, args.name, switches, extra)
        print(f"[{i + 1}/{len(ROWS)}] {row}: python test.py {' '.join(line[2:])}", flush=True)
        before = log.stat().st_size if log.exists() else 0
        done = subprocess.run(line, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], file=sys.stderr)
            return done.returncode
        with open(log) as handle:
            handle.seek(before)
            results.append((row, parse_map(handle.read())))
        print(f"      mAP E/M/H: {results[-1][1][0]:.2f} / {results[-1][1][1]:.2f} / {results[-1][1][2]:.2f}",
              flush=True)
    sweep = sweep_command(data_dir, out_dir, args.name)
    print(f"[sweep] reranking M, K, beta on the saved features: python sweep.py {' '.join(sweep[2:])}", flush=True)
    done = subprocess.run(sweep, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], file=sys.stderr)
        return done.returncode
    cpu = os.times()
    cpu_s = cpu.children_user + cpu.children_system - cpu_start.children_user - cpu_start.children_system
    print(f"\nEfficientNet-Lite0 (ImageNet) on the '{args.name}' benchmark, mAP (%); "
          f"{time.time() - start:.0f} s wall, {cpu_s:.0f} s CPU:\n")
    print(format_table(results))
    if args.pictures:
        print(f"\npictures: {out_dir / 'pictures' / args.name / 'index.html'}")
    print(f"sweep of the reranking (table, CSV, JSON, plots): {out_dir / 'sweep'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
