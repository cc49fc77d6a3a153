"""The price of reduced precision, per backbone, on the demo's real photos: where it goes and what it costs.

    python demo/make_benchmark.py --root demo/data --name demo          # once (docs/demo.md)
    python bench/precision.py --data-dir demo/data                       # CPU: bf16 vs fp32
    python bench/precision.py --data-dir demo/data --device cuda         # GPU: bf16 and fp16 vs fp32

Two parts, in one run:

1. Where precision goes (`--layers N`, on N demo photos, scale 1): the relative error
   ||reduced - fp32|| / ||fp32|| of each stage's output when the whole network runs reduced
   (accumulated), and of each unit (stem, block, head, pooling) run alone in reduced precision
   on its fp32 input rounded to the reduced type (local), both without and with the backbone's plan.
2. The price (`extract_features` on the whole demo benchmark, 3 scales, the project's extraction
   defaults but a batch of 16, as demo/run_demo.py runs test.py): seconds and user/sys CPU seconds,
   descriptor cosine to fp32 (min / mean), top-10 agreement of the global ranking with fp32's, and
   mAP E/M/H of the global ranking and of SuperGlobal's reranking, for fp32, the plain autocast
   ("<precision> all") and the backbone's precision plan (model/registry.py, model/precision.py).

Backbones: EfficientNet-Lite0 with its real ImageNet weights (the demo packages); ResNet-50/101 with
calibrated random stand-in weights (test.data.synthetic), whose mAP says nothing about real weights
but whose agreement with fp32 does show the arithmetic, plus (`--roxford N`) N ROxford-size stand-in photos
for the ResNet layer analysis.
"""

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from config import get_cfg_defaults  # noqa: E402
from model.precision import Fp32Island, apply_precision_plan, fp32_module_names  # noqa: E402
from model.registry import get_backbone  # noqa: E402
from modules.reranking import rerank  # noqa: E402
from test.build import build_descriptor, load_descriptor  # noqa: E402
from test.data.gnd import load_gnd  # noqa: E402
from test.data.images import normalize_for  # noqa: E402
from test.datasets import Revisitop  # noqa: E402
from test.extraction.extract import autocast_context, extract_features, prepared_descriptor, with_precision_plan  # noqa: E402
from test.extraction.runtime import ExtractOptions, tune_process  # noqa: E402
from test.retrieval.similarity import rank_by_similarity  # noqa: E402

BACKBONES = {"LITE0": ("EFFICIENTNET_LITE0", 0), "R50": ("RESNET", 50), "R101": ("RESNET", 101)}
TOP = 10  # top-k agreement with fp32's global ranking


def descriptor_for(name, scales=3):
    """The full SuperGlobal descriptor (config defaults) of `name`, with weights: Lite0's real ones,
    the ResNets' calibrated random stand-ins."""
    model_type, depth = BACKBONES[name]
    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE, cfg.TEST.SCALE_LIST = model_type, scales
    if model_type == "RESNET":
        from test.data.synthetic import random_resnet

        cfg.MODEL.DEPTH = depth
        descriptor = build_descriptor(cfg)
        descriptor.backbone.load_state_dict(random_resnet(depth).state_dict())
        return descriptor
    cfg.TEST.WEIGHTS = "auto"
    return load_descriptor(cfg)[0]


def units_of(descriptor):
    """(name, module) of the units whose local error is measured: stem, every block, head, pooling."""
    from model.efficientnet_lite import MBConvBlock
    from model.resnet import ResBlock, ResStem

    units = []
    for name, module in descriptor.named_modules():
        if isinstance(module, Fp32Island):
            continue
        name = name.replace(".module", "")  # the plain name of a module inside an Fp32Island
        if isinstance(module, (ResStem, ResBlock, MBConvBlock)) or name.endswith(("_conv_stem", "_conv_head")) \
                or name in ("rgem", "gemp"):
            units.append((name, module))
    pooling = [u for u in units if u[0] in ("rgem", "gemp")]
    return [u for u in units if u not in pooling] + sorted(pooling, reverse=True)  # rgem runs before gemp


def relative_error(reduced, exact):
    """Per image ||reduced - exact|| / ||exact|| (B,)."""
    exact, reduced = exact.float().flatten(1), reduced.float().flatten(1)
    return (reduced - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-30)


def layer_errors(descriptor, batches, device, precision, plan):
    """{unit: (accumulated error, local error)}, means over images, for the prepared descriptor
    (BN folded, channels-last, as extraction runs it); with `plan`, its fp32 islands applied."""
    model = prepared_descriptor(descriptor, ExtractOptions().resolve(device))
    model = apply_precision_plan(model, plan) if plan is not None else model
    units = units_of(model)
    reduced_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    islands = set(fp32_module_names(model, plan)) if plan is not None else set()
    totals = {name: [0.0, 0.0] for name, _ in units}
    count = 0
    for batch in batches:
        captured = {}
        hooks = [module.register_forward_hook(
            lambda m, args, out, name=name: captured.setdefault(name, []).append(
                (args[0].clone(), out.clone())))  # clones: the next in-place activation would change them
            for name, module in units]
        with torch.inference_mode():
            model(batch)
            exact = {name: captured.pop(name) for name, _ in units}
            with autocast_context(device, precision):
                model(batch)
            reduced = {name: captured.pop(name) for name, _ in units}
            for name, module in units:
                x, out = exact[name][0]
                acc = relative_error(reduced[name][0][1], out)
                if name in islands or any(name.startswith(i + ".") for i in islands):
                    local = torch.zeros_like(acc)
                else:
                    with autocast_context(device, precision):  # its input as a reduced run hands it over
                        local = relative_error(module(x.to(reduced_dtype).float()), out)
                totals[name][0] += float(acc.sum())
                totals[name][1] += float(local.sum())
        for hook in hooks:
            hook.remove()
        count += len(batch)
    return {name: (a / count, b / count) for name, (a, b) in totals.items()}


def photo_batches(images, count, device, norm):
    """The first `count` images of a RevisitopImages-like dataset as normalised batches of one."""
    return [normalize_for(images[i][1][None].to(device), norm) for i in range(min(count, len(images)))]


def timed(fn):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    value = fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return value, {"seconds": time.perf_counter() - start, "user_s": after.ru_utime - before.ru_utime,
                   "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}


def evaluate(dataset, Q, X):
    """Global ranks and mAP (%) of the global ranking and after SuperGlobal reranking (defaults)."""
    cfg = get_cfg_defaults().SupG
    Qt, Xt = torch.from_numpy(Q), torch.from_numpy(X)
    ranks = rank_by_similarity(Xt, Qt)
    reranked = rerank(Qt, Xt, ranks, M=cfg.M, K=cfg.K, beta=cfg.beta, columns_are_queries=True)
    maps = [{p: 100 * r[p]["map"] for p in "EMH"} for r in (dataset.evaluate(ranks.numpy()),
                                                          dataset.evaluate(reranked.numpy()))]
    return ranks.numpy(), maps


def forward_speed(variants, batch, device, repeats):
    """{label: (wall s, CPU s)} per image of one forward pass over `batch`: the extraction's prepared
    module (BN folded, channels-last, the variant's islands), variants interleaved `repeats` times,
    the fastest pass of each kept (other load on the machine only ever adds time). CPU seconds
    (this process, all its threads) are what the pass itself cost, even when other jobs share the
    cores; on CUDA they only count the launching."""
    options = ExtractOptions().resolve(device)
    prepared = [(label, precision, with_precision_plan(prepared_descriptor(model, options), model, precision))
                for label, precision, model in variants]
    batch = batch.contiguous(memory_format=torch.channels_last)
    best = {label: (float("inf"), float("inf")) for label, _, _ in prepared}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # the first round only warms up
            for label, precision, model in prepared:
                start, cpu = time.perf_counter(), time.process_time()
                with autocast_context(device, precision):
                    model(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall, cpu = (time.perf_counter() - start) / len(batch), (time.process_time() - cpu) / len(batch)
                if round_:
                    best[label] = (min(best[label][0], wall), min(best[label][1], cpu))
    return best


def speed_batch(dataset, device, norm, count=16):
    """`count` database views of the most common size, normalised: one batch as extraction runs it."""
    images = [dataset.database.images[i][1] for i in range(len(dataset.database.paths))]
    shapes = [tuple(im.shape) for im in images]
    common = max(set(shapes), key=shapes.count)
    picked = [im for im in images if tuple(im.shape) == common][:count]
    return normalize_for(torch.stack(picked).to(device), norm)


def price_rows(name, descriptor, dataset, device, precisions, plan, warm_up=True, extra_plans=(), batch_size=16,
               repeats=3):
    """One row per (precision, with/without plan): speed, agreement with fp32, mAP. `extra_plans`:
    (label, PrecisionPlan) pairs to try besides the registry's."""
    def extract(model, precision):
        return np.concatenate([extract_features(model, split.images, device, precision=precision,
                                                batch_size=batch_size, desc=f"{name} {precision}")
                               for split in (dataset.queries, dataset.database)])

    def planned(variant_plan):
        """`descriptor` with `variant_plan` as its precision plan: extraction applies it."""
        variant = copy.deepcopy(descriptor)
        variant.precision_plan = variant_plan
        return variant

    nq = len(dataset.queries.paths)
    variants = [("fp32", "fp32", descriptor)]
    for precision in precisions:
        variants.append((f"{precision} all", precision, planned(None)))
        if plan is not None and plan.fp32:
            variants.append((f"{precision} plan", precision, planned(plan)))
        for label, extra in extra_plans:
            variants.append((f"{precision} {label}", precision, planned(extra)))
    speed = forward_speed(variants, speed_batch(dataset, device, descriptor.input_norm), device, repeats)
    rows, reference = [], None
    for label, precision, model in variants:
        if warm_up:
            extract(model, precision)  # oneDNN primitives per image size
        features, cost = timed(lambda: extract(model, precision))
        ranks, (global_map, reranked_map) = evaluate(dataset, features[:nq], features[nq:])
        if reference is None:
            reference = (features, ranks, cost["seconds"])
        cosine = (features * reference[0]).sum(1)
        agree = np.mean([len(set(ranks[:TOP, j]) & set(reference[1][:TOP, j])) / TOP for j in range(nq)])
        rows.append({"backbone": name, "precision": label, **cost, "ms_per_image": 1000 * speed[label][0],
                     "cpu_ms_per_image": 1000 * speed[label][1], "speedup": speed["fp32"][0] / speed[label][0],
                     "cpu_speedup": speed["fp32"][1] / speed[label][1],
                     "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
                     f"top{TOP}_agreement": float(agree), "global": global_map, "reranked": reranked_map})
        print(f"{name} {label}: {cost['seconds']:.1f} s, min cosine {cosine.min():.5f}", flush=True)
    return rows


def print_layers(name, precision, errors, plan_errors):
    print(f"\n{name}, {precision} vs fp32, relative error per unit (mean over images); "
          "accumulated = whole network reduced, local = this unit alone reduced on its fp32 input\n")
    print("| unit | accumulated | local | accumulated, plan | local, plan |\n|---|--:|--:|--:|--:|")
    for unit, (acc, local) in errors.items():
        planned = " | ".join(f"{v:.2e}" for v in plan_errors[unit]) if unit in plan_errors else "- | -"
        print(f"| {unit} | {acc:.2e} | {local:.2e} | {planned} |")


def print_price(rows):
    print("\nms/img and speed: one batch of 16 demo views, variants interleaved, fastest of the repeats (wall "
          "and this process's CPU time); seconds / user / sys: the whole benchmark extracted once\n")
    print("| backbone | precision | ms/img | speed vs fp32 | CPU ms/img | CPU speed vs fp32 | seconds | user s "
          f"| sys s | min cosine | mean cosine | top-{TOP} agreement | global E / M / H | reranked E / M / H |\n"
          "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|")
    for r in rows:
        g, rr = r["global"], r["reranked"]
        print(f"| {r['backbone']} | {r['precision']} | {r['ms_per_image']:.1f} | {r['speedup']:.2f}x "
              f"| {r['cpu_ms_per_image']:.1f} | {r['cpu_speedup']:.2f}x "
              f"| {r['seconds']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['min_cosine']:.5f} "
              f"| {r['mean_cosine']:.6f} "
              f"| {r[f'top{TOP}_agreement']:.3f} | {g['E']:.2f} / {g['M']:.2f} / {g['H']:.2f} "
              f"| {rr['E']:.2f} / {rr['M']:.2f} / {rr['H']:.2f} |")


def roxford_batches(count, device, norm, divisor):
    """`count` ROxford-size stand-in photos (bench/stand_ins.py), normalised, batches of one."""
    from bench.stand_ins import photo_like, roxford_sizes

    rng = np.random.default_rng(0)
    batches = []
    for w, h in roxford_sizes(count):
        image = photo_like(max(32, w // divisor), max(32, h // divisor), rng)
        batches.append(normalize_for(torch.from_numpy(image).permute(2, 0, 1)[None].to(device), norm))
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="demo/data", help="root holding demo/ (demo/make_benchmark.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbones", nargs="*", default=["LITE0", "R50", "R101"], choices=sorted(BACKBONES))
    parser.add_argument("--precisions", nargs="*", default=None, help="default: bf16 (CPU), bf16 fp16 (CUDA)")
    parser.add_argument("--layers", type=int, default=8, help="photos for the layer analysis (0: skip it)")
    parser.add_argument("--roxford", type=int, default=2,
                        help="ROxford-size stand-in photos for the ResNets' layer analysis (0: skip)")
    parser.add_argument("--roxford-divisor", type=int, default=2, help="shrink those photos (speed)")
    parser.add_argument("--batch-size", type=int, default=16, help="as demo/run_demo.py runs test.py")
    parser.add_argument("--resnet-scales", type=int, default=3, choices=[1, 3, 5],
                        help="TEST.SCALE_LIST for the ResNets' price (1 on a slow CPU)")
    parser.add_argument("--no-warm-up", action="store_true", help="extract once per variant (no untimed pass before)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds of the speed batch")
    parser.add_argument("--no-price", action="store_true", help="only the layer analysis")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    tune_process()
    device = torch.device(args.device)
    precisions = args.precisions or (["bf16", "fp16"] if device.type == "cuda" else ["bf16"])
    dataset = Revisitop(load_gnd(Path(args.data_dir), "demo"), "demo")
    print(f"device {device}, torch {torch.__version__}, demo benchmark: {len(dataset.queries.paths)} queries, "
          f"{len(dataset.database.paths)} database images", flush=True)
    report = {"device": str(device), "layers": [], "price": []}
    for name in args.backbones:
        plan = get_backbone(BACKBONES[name][0]).precision_plan
        if args.layers:
            one_scale = descriptor_for(name, scales=1).to(device)
            sets = [("demo photos", photo_batches(dataset.database.images, args.layers, device,
                                                  one_scale.input_norm))]
            if BACKBONES[name][0] == "RESNET" and args.roxford:
                sets.append(("ROxford-size stand-ins", roxford_batches(args.roxford, device, one_scale.input_norm,
                                                                       args.roxford_divisor)))
            for label, batches in sets:
                for precision in precisions:
                    errors = layer_errors(one_scale, batches, device, precision, None)
                    plan_errors = layer_errors(one_scale, batches, device, precision, plan) if plan.fp32 else {}
                    print_layers(f"{name} on {len(batches)} {label}", precision, errors, plan_errors)
                    report["layers"].append({"backbone": name, "images": label, "precision": precision,
                                             "errors": errors, "plan_errors": plan_errors})
        if not args.no_price:
            scales = args.resnet_scales if BACKBONES[name][0] == "RESNET" else 3
            rows = price_rows(f"{name} ({scales} scales)", descriptor_for(name, scales).to(device), dataset, device,
                              precisions, plan, warm_up=not args.no_warm_up, batch_size=args.batch_size,
                              repeats=args.repeats)
            report["price"] += rows
            if plan.warning:
                print(f"{name}: {plan.warning}")
    if report["price"]:
        print_price(report["price"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
