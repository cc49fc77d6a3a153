"""End to end, side by side: the official one-image-at-a-time extraction loop against this project's
test.py extraction, each run in its own child process, interleaved and repeated.

    python bench/official_vs_project.py                         # R50, 3 scales, fp32, 18 ROxford sizes
    python bench/official_vs_project.py --model lite0 --size 1024x768 --sides today,project
    python bench/official_vs_project.py --images 2 --repeats 1   # smoke run

Sides:
- official: a transcription of SuperGlobal's test loop (test/test_utils.py `extract_feature` with its
  DataSet): a batch-1 DataLoader with the official worker count, `cv2.imread` + per-image numpy
  normalisation in the worker (float32 tensors), then per scale a torchvision-style bilinear resize
  and one forward pass, Scale-GeM, L2; torch's default threads, glibc's default allocator.
- project: this tree's test.py extraction (`build_extractor`) with every default, after the start-up
  tuning that test.py's main does.
- today: the same, from the tree of the git revision `--today-rev` (default: the merge base of
  HEAD and main, the code this branch speeds up), for "speedup vs today".

Per run: wall seconds, user and system CPU seconds, minor/major page faults and peak RSS of the
child (with its DataLoader workers: os.wait4). Then the median per side, the ratio to the first
side, and the agreement of the features (cosine, and the ranking of all images by each image).
Random (calibrated) weights: the real checkpoints are not on this machine. The machine is shared
with other developers: interleaving and ratios keep the comparison fair; absolute seconds vary.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_WORKERS = 4  # DATA_LOADER.NUM_WORKERS of the CVNet / SuperGlobal configs (from memory: no network here)
SCALES = [0.7071, 1.0, 1.4142]


# --------------------------------------------------------------------------- children

def official_child(args):
    """The official loop (see the module docstring). Plain modules, no tuning of any kind."""
    sys.path.insert(0, str(ROOT))
    import cv2
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset

    from config import get_cfg_defaults
    from test.build import build_descriptor

    class DataSet(Dataset):  # SuperGlobal test/dataset.py, database images (no crop)
        def __init__(self, paths):
            self.paths = paths
            self._mean, self._sd = [0.406, 0.456, 0.485], [0.225, 0.224, 0.229]

        def _prepare_im(self, im):
            im = im.transpose([2, 0, 1])
            im = im / 255.0
            for i in range(im.shape[0]):
                im[i] = im[i] - self._mean[i]
                im[i] = im[i] / self._sd[i]
            return im

        def __getitem__(self, index):
            im = cv2.imread(self.paths[index])
            im = im.astype(np.float32, copy=False)
            return self._prepare_im(im)

        def __len__(self):
            return len(self.paths)

    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE = "EFFICIENTNET_LITE0" if args.model == "lite0" else "RESNET"
    cfg.MODEL.DEPTH = 101 if args.model == "r101" else 50
    model = build_descriptor(cfg)
    load_model_weights(model, cfg, args.weights)
    device = torch.device(args.device)
    model.to(device)

    def extract_global_descriptor(im, scales):  # per scale: resize, forward, pool, L2, fc
        per_scale = []
        for scale in scales:
            if scale != 1.0:
                size = [int(im.shape[-2] * scale), int(im.shape[-1] * scale)]
                im_s = F.interpolate(im, size=size, mode="bilinear", align_corners=False, antialias=False)
            else:
                im_s = im
            per_scale.append(model.forward_single_scale(im_s).float())
        desc = model.sgem(per_scale) if model.sgem is not None else torch.stack(per_scale).mean(0)
        return F.normalize(desc, p=2, dim=-1)

    loader = DataLoader(DataSet(args.paths), batch_size=1, shuffle=False, num_workers=args.official_workers)
    feats = []
    with torch.no_grad():
        for im in loader:
            desc = extract_global_descriptor(im.to(device), SCALES)
            feats.append(F.normalize(desc, p=2, dim=1).cpu())
    np.save(args.out, torch.cat(feats).numpy())


def project_child(args):
    """test.py's extraction of the tree `args.root`, with its defaults (and its start-up tuning)."""
    root = Path(args.root)
    sys.path.insert(0, str(root))
    os.chdir(root)
    import torch

    try:
        from test.extraction.runtime import tune_process
        tune_process()  # what test.py's main does first
    except ImportError:
        pass  # an older tree without it
    from config import load_cfg_from_args
    model = ["MODEL.TYPE", "EFFICIENTNET_LITE0"] if args.model == "lite0" else \
        ["MODEL.DEPTH", "101" if args.model == "r101" else "50"]
    cfg = load_cfg_from_args(model + ["TEST.WEIGHTS", args.weights, "DEVICE", args.device])
    device = torch.device(args.device)
    try:  # this tree: one flow over dataset splits (test/pipeline.py)
        from test.data.images import RevisitopImages
        from test.datasets import Split
        from test.pipeline import build_extractor
    except ImportError:  # an older tree: build_extractor lived in test.py and took (paths, bboxes, label)
        spec = importlib.util.spec_from_file_location("test_entry", root / "test.py")
        entry = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(entry)
        extract, _ = entry.build_extractor(cfg, device)
        np.save(args.out, extract(args.paths, None, "project"))
        return
    extract, _ = build_extractor(cfg, device)
    np.save(args.out, extract(Split("project", args.paths, None, RevisitopImages(args.paths))))


def load_model_weights(descriptor, cfg, weights):
    from model.checkpoint import load_weights
    from model.efficientnet_lite import load_lite0_weights

    if cfg.MODEL.TYPE == "EFFICIENTNET_LITE0":
        load_lite0_weights(descriptor.backbone, weights)
    else:
        load_weights(descriptor.backbone, weights, cfg.MODEL.DEPTH)


# --------------------------------------------------------------------------- parent

def run_side(side, paths, weights, model, device, out, root, official_workers):
    """One child run; returns its measurements."""
    child = "official" if side == "official" else "project"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", child,
               "--model", model, "--device", device, "--weights", weights, "--out", out, "--root", str(root),
               "--official-workers", str(official_workers), "--paths", *paths]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{stderr[-3000:]}")
    return {"side": side, "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt, "major_faults": usage.ru_majflt,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def agreement(a, b):
    """(lowest cosine of an image's two descriptors, how many images rank all others identically,
    the largest similarity gap (under `a`) between two images that the rankings order differently:
    a gap at float-rounding level means the rankings differ only on ties)."""
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    sim_a = a.astype(np.float64) @ a.T.astype(np.float64)
    ranks_a, ranks_b = np.argsort(-sim_a, axis=1, kind="stable"), np.argsort(-(b @ b.T), axis=1, kind="stable")
    rows = np.arange(len(a))[:, None]
    gap = np.abs(sim_a[rows, ranks_a] - sim_a[rows, ranks_b]).max() if len(a) else 0.0
    return float(cosine.min()), int((ranks_a == ranks_b).all(1).sum()), float(gap)


def tree_of(rev, folder):
    """The files of git revision `rev` under `folder` (for the `today` side)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def summarise(runs, sides):
    rows = []
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        row = {"side": side, "runs": len(mine)}
        for key in ("wall_s", "user_s", "sys_s", "minor_faults", "major_faults", "peak_rss_mib"):
            row[key] = float(np.median([r[key] for r in mine]))
        row["sys_pct_of_user"] = 100 * row["sys_s"] / max(row["user_s"], 1e-9)
        rows.append(row)
    for row in rows:
        row["speedup_vs_" + sides[0]] = rows[0]["wall_s"] / row["wall_s"]
    return rows


def table(rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))  # later rows add the agreement columns
    fmt = [lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else
           (f"{v:.0f}" if isinstance(v, float) else str(v))][0]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="r50", choices=["r50", "r101", "lite0"])
    parser.add_argument("--sides", default="official,project", help="comma list of official, project, today")
    parser.add_argument("--images", type=int, default=18)
    parser.add_argument("--size", default="roxford", help="roxford (real size distribution) or WxH")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved (ABBA...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--today-rev", default="", help="git revision of `today` (default: merge base with main)")
    parser.add_argument("--official-workers", type=int, default=OFFICIAL_WORKERS)
    parser.add_argument("--json", default="")
    parser.add_argument("--child", choices=["official", "project"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (official_child if args.child == "official" else project_child)(args)
        return

    sys.path.insert(0, str(ROOT))
    from bench.stand_ins import roxford_sizes, write_cvnet_checkpoint, write_jpegs

    sides = args.sides.split(",")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.size == "roxford":
            sizes = roxford_sizes(args.images, seed=0)
        else:
            w, h = (int(v) for v in args.size.lower().split("x"))
            sizes = [(w, h)] * args.images
        paths = write_jpegs(folder / "jpg", sizes)
        weights = "auto" if args.model == "lite0" else \
            write_cvnet_checkpoint(folder / "weights.pyth", 101 if args.model == "r101" else 50)
        roots = {"official": ROOT, "project": ROOT}
        if "today" in sides:
            (folder / "today").mkdir()
            rev = args.today_rev or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
                                                   capture_output=True, text=True, check=True).stdout.strip()
            roots["today"] = tree_of(rev, folder / "today")
        print(f"{args.model}, 3 scales, fp32, {args.images} images ({args.size}: "
              f"{sorted(set(sizes))[:4]}...), device {args.device}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at start; order per round alternates", flush=True)
        runs, features = [], {}
        for repeat in range(args.repeats):
            order = sides if repeat % 2 == 0 else sides[::-1]
            for side in order:
                out = str(folder / f"{side}.npy")
                run = run_side(side, paths, weights, args.model, args.device, out, roots[side], args.official_workers)
                runs.append(run)
                features[side] = np.load(out)
                print(f"  round {repeat + 1} {side:8s} wall {run['wall_s']:7.1f} s  user {run['user_s']:7.1f}  "
                      f"sys {run['sys_s']:6.1f}  minflt {run['minor_faults']:>10}  peak {run['peak_rss_mib']:.0f} MiB",
                      flush=True)
    rows = summarise(runs, sides)
    for row in rows[1:]:
        cosine, same, gap = agreement(features[sides[0]], features[row["side"]])
        row["min_cosine_to_" + sides[0]] = cosine
        row["same_ranking"] = f"{same}/{args.images}"
        row["largest_swapped_gap"] = f"{gap:.1e}"
    print("\nmedians per side\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "summary": rows}, indent=1))


if __name__ == "__main__":
    main()
