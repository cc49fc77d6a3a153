"""Extract the R1M (revisitop1m) distractor features that test.py adds with SupG.onemeval.

    python extract_rop1m.py --weight ./weights --depth 50 --data-dir ./revisitop1m
    torchrun --nproc-per-node 4 extract_rop1m.py --weight ./weights --depth 50 --data-dir ./revisitop1m

Resumable (run the same command again after a crash or kill), shardable (--num-shards/--shard-id,
or torchrun), tolerant of unreadable images (zero rows, listed in the sidecar). The features are the
ones test.py computes for a database image with the same KEY VALUE settings. See
docs/r1m_extraction.md and test/r1m/job.py for the on-disk layout.
"""

from errors import quiet_interrupt_during_startup

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from config import cfg_file_of, describe_keys, load_cfg_from_args, scales_of
from errors import ArgumentParser, UserError, exit_code_of, exit_with, typed_flags
from model.checkpoint import checkpoint_path
from model.fingerprint import file_sha256
from test.build import (
    FEATURE_KEYS,
    build_descriptor,
    default_r1m_path,
    descriptor_fingerprint,
    load_backbone_weights,
)
from test.extraction.device import resolve_device
from test.extraction.extract import check_precision
from test.extraction.runtime import options_from_cfg, tune_process
from test.outputs.writer import forget_inputs, refuse_input, register_input
from test.r1m.job import (
    IMAGE_DIR,
    LIST_NAME,
    SIDECAR_FIELDS,
    WorkDir,
    completed_sidecar,
    extract_part,
    identity_differences,
    merge,
    parts_of_shard,
    read_image_list,
    read_record,
    require_some_images,
    run_identity,
    sidecar_path,
)

DESCRIPTION = """Extract R1M distractor features: a torch.save'd float32 tensor N x D (rows L2-normalised,
list order, all-zero rows for unreadable images) plus a JSON sidecar <output>.json.

Trailing KEY VALUE pairs select the descriptor, with the syntax of test.py, e.g.
    SupG.rgem False TEST.SCALE_LIST 1 TEST.PRECISION bf16
Default: the config defaults (GeM+, Regional-GeM, Scale-GeM, ReLU+, 3 scales, fp32)."""


# The config keys a run reads (the rest of a --cfg file, e.g. test.py's config.yaml, is ignored).
# MODEL.TYPE and TEST.DESCRIPTOR are read to refuse anything but their defaults.
READ_KEYS = ("MODEL.TYPE", "MODEL.DEPTH", "MODEL.HEADS.REDUCTION_DIM", "TEST.WEIGHTS", "TEST.DESCRIPTOR",
             "TEST.SCALE_LIST", "TEST.BATCH_SIZE", "TEST.NUM_WORKERS", "TEST.NUM_THREADS", "TEST.FOLD_BN",
             "TEST.CHANNELS_LAST", "TEST.PIN_MEMORY", "TEST.NON_BLOCKING", "TEST.UINT8_TRANSFER", "TEST.PRECISION",
             *(f"SupG.{key}" for key in FEATURE_KEYS), "DEVICE")


def build_parser():
    parser = ArgumentParser(prog="extract_rop1m.py", description=DESCRIPTION, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     usage="python extract_rop1m.py --weight PATH --depth {50,101} --data-dir ROOT "
                           "[options] [KEY VALUE ...]",
                     epilog="config keys it reads (default, meaning):\n" + describe_keys(READ_KEYS))
    parser.add_argument("--weight", required=True, metavar="PATH",
                        help="CVNet checkpoint file, or a directory holding CVPR2022_CVNet_R{depth}.pyth")
    parser.add_argument("--depth", required=True, type=int, choices=[50, 101], help="ResNet depth")
    parser.add_argument("--data-dir", required=True, metavar="ROOT",
                        help=f"holds {LIST_NAME} and the images (under ROOT/jpg/ or ROOT/)")
    parser.add_argument("--output", metavar="FILE", help="default ./feats_1m_RN<depth>.pth (RN50 or RN101)")
    parser.add_argument("--num-shards", type=int, metavar="N",
                        help="split the work over N processes (default: WORLD_SIZE under torchrun, else 1)")
    parser.add_argument("--shard-id", type=int, metavar="I",
                        help="this process's shard, 0..N-1 (default: RANK under torchrun, else 0)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per forward (default TEST.BATCH_SIZE)")
    parser.add_argument("--num-workers", type=int, metavar="W",
                        help="image-decoding processes (default TEST.NUM_WORKERS)")
    parser.add_argument("--device", metavar="auto|cpu|cuda|cuda:N",
                        help="default auto; under torchrun auto/cuda means cuda:LOCAL_RANK")
    parser.add_argument("--shard-size", type=int, default=2000, metavar="S",
                        help="images per committed part (default 2000); fixed for the whole run")
    parser.add_argument("--merge-only", action="store_true",
                        help="only assemble the output from finished parts (all must be done)")
    return parser


FLAG_KEYS = {"--weight": "TEST.WEIGHTS", "--depth": "MODEL.DEPTH", "--batch-size": "TEST.BATCH_SIZE",
             "--num-workers": "TEST.NUM_WORKERS", "--device": "DEVICE"}


def make_cfg(args, opts):
    """Config from the trailing KEY VALUE pairs, then the flags (which must not contradict them)."""
    stray = [o for o in opts if o.startswith("-") and o != "--cfg" and not o[1:2].isdigit() and o[1:2] != "."]
    if stray:
        raise UserError(f"unknown option {stray[0]} (python extract_rop1m.py --help lists them)")
    cfg = load_cfg_from_args(opts, description="extract_rop1m", aliases=[
        ("MODEL.DEPTH", args.depth, "--depth"), ("TEST.WEIGHTS", args.weight, "--weight"),
        ("TEST.BATCH_SIZE", args.batch_size, "--batch-size"), ("TEST.NUM_WORKERS", args.num_workers, "--num-workers"),
        ("DEVICE", args.device, "--device")])
    if cfg.TEST.DESCRIPTOR != "superglobal" or cfg.MODEL.TYPE != "RESNET":
        raise UserError("extract_rop1m.py computes SuperGlobal descriptors on the CVNet ResNet only: "
                        "leave TEST.DESCRIPTOR and MODEL.TYPE at their defaults")
    return cfg


def _env_int(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def shard_of(args):
    """(num_shards, shard_id, local_rank): the flags, else torchrun's WORLD_SIZE/RANK, else 1, 0."""
    world, rank, local_rank = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if local_rank is not None and local_rank < 0:
        raise UserError(f"bad value {local_rank} for LOCAL_RANK (environment, set by torchrun): expected an "
                        "integer >= 0")
    num_shards = args.num_shards if args.num_shards is not None else (world if world is not None else 1)
    if args.shard_id is not None:
        shard_id = args.shard_id
    elif args.num_shards is not None and world is None:
        if num_shards > 1:
            raise UserError(f"--num-shards {num_shards} needs --shard-id (0..{num_shards - 1})")
        shard_id = 0
    else:
        shard_id = rank or 0
    # name what the user set: a flag, or torchrun's environment variable
    shards_from = "--num-shards" if args.num_shards is not None else "WORLD_SIZE (environment, set by torchrun)"
    id_from = "--shard-id" if args.shard_id is not None else "RANK (environment, set by torchrun)"
    if num_shards < 1:
        raise UserError(f"bad value {num_shards} for {shards_from}: expected an integer >= 1")
    if not 0 <= shard_id < num_shards:
        raise UserError(f"bad value {shard_id} for {id_from}: expected 0..{num_shards - 1} "
                        f"({num_shards} shards from {shards_from})")
    return num_shards, shard_id, local_rank


def _duration(seconds):
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def refuse_foreign_output(output, identity):
    """Stop when FILE or FILE.json exists but was not made by this run and no work dir claims it."""
    sidecar = sidecar_path(output)
    if not (output.exists() or sidecar.exists()):
        return
    try:
        stored = read_record(sidecar, SIDECAR_FIELDS)
        diffs = identity_differences({"fingerprint": stored.get("fingerprint", {}),
                                      "image_list": stored.get("image_list", {})},
                                     {"fingerprint": identity["fingerprint"], "image_list": identity["image_list"]})
        if diffs:
            why = f"but was made with other settings (now vs then: {'; '.join(diffs)})"
        elif output.is_file() and file_sha256(output) != stored.get("output_sha256"):
            why = f"but its sha256 is not the one recorded in {sidecar.name} (damaged or replaced after the run)"
        else:
            why = "but was made by an unfinished or other run"
    except (OSError, ValueError, AttributeError, RecursionError):
        why = "without a readable sidecar" if output.exists() else "(only its sidecar exists)"
    raise UserError(f"{output} exists {why}; delete it and {sidecar.name} or choose another --output")


def refuse_output_over_inputs(output, opts, image_list, weights):
    """--output, its sidecar and its parts folder must not be (or lie in) what this run reads: the
    image list, the images, the weights or the --cfg file."""
    forget_inputs()  # main() may run several times in one process (tests)
    register_input(Path(image_list.root) / LIST_NAME, "the image list in --data-dir")
    register_input(Path(image_list.root) / IMAGE_DIR, "the images in --data-dir")
    register_input(weights, "TEST.WEIGHTS")
    if cfg_file_of(opts):
        register_input(cfg_file_of(opts), "--cfg")
    for path in (output, sidecar_path(output), output.with_name(output.name + ".parts") / "run.json"):
        refuse_input(path)


def run(args, opts):
    """Extract this process's shard of the R1M list into parts, and merge them when all are done."""
    started = time.time()
    cfg = make_cfg(args, opts)
    if args.shard_size < 1:
        raise UserError(f"bad value {args.shard_size} for --shard-size: expected an integer >= 1")
    num_shards, shard_id, local_rank = shard_of(args)
    device = resolve_device(cfg.DEVICE, "DEVICE", local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # DataLoader pinning and caches go to this process's GPU
    check_precision(device, cfg.TEST.PRECISION)  # before any work
    image_list = read_image_list(args.data_dir)
    if not args.merge_only:
        require_some_images(image_list)
    weights = checkpoint_path(cfg.TEST.WEIGHTS, cfg.MODEL.DEPTH)
    dim = cfg.MODEL.HEADS.REDUCTION_DIM
    identity = run_identity(descriptor_fingerprint(cfg, weights), image_list, args.shard_size, dim)
    output = Path(args.output or default_r1m_path(cfg))
    if output.is_dir():
        raise UserError(f"--output {output} is a directory: give a file name")
    refuse_output_over_inputs(output, opts, image_list, weights)

    done_sidecar = completed_sidecar(output, identity)
    if done_sidecar is not None:
        print(f"already complete: {output} ({done_sidecar['count']} x {done_sidecar['dim']}, "
              f"{done_sidecar['failed_count']} failed images; sidecar {sidecar_path(output)})", flush=True)
        return
    workdir = WorkDir(output, identity)
    if workdir.exists() or args.merge_only:
        workdir.open(create=False)  # another run's directory (or none to merge): stop here
    else:
        refuse_foreign_output(output, identity)
    if not args.merge_only:
        descriptor = build_descriptor(cfg)
        load_backbone_weights(cfg, descriptor.backbone)  # wrong file or depth: stop here
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create {output.parent}: {error.strerror}") from None
        workdir.open(create=True)
    workdir.remove_stale_temps()

    total_parts = len(workdir.ranges)
    label = f"shard {shard_id} of {num_shards}"
    extracted = failed_here = 0
    if not args.merge_only:
        mine = parts_of_shard(total_parts, num_shards, shard_id)
        done = workdir.done()
        todo = [part for part in mine if part not in done]
        todo_images = sum(end - start for start, end in (workdir.ranges[p] for p in todo))
        print(f"{len(image_list)} images in {total_parts} parts of {args.shard_size}; {label}: {len(mine)} parts, "
              f"{len(mine) - len(todo)} already done, {len(todo)} to do ({todo_images} images); "
              f"device {device}, precision {cfg.TEST.PRECISION}, scales {scales_of(cfg.TEST.SCALE_LIST)}, "
              f"weights {weights}; output {output}", flush=True)
        descriptor.to(device)
        extract_started = time.time()
        for number, part in enumerate(todo, 1):
            start, end = workdir.ranges[part]
            part_started = time.time()
            features, failed = extract_part(
                descriptor, image_list, start, end, device, cfg.TEST.BATCH_SIZE, cfg.TEST.NUM_WORKERS,
                cfg.TEST.PRECISION, f"[{label}] part {number}/{len(todo)}", dim, options_from_cfg(cfg))
            for item in failed:
                tqdm.write(f"warning: image {item['index']} {item['path']}: {item['reason']}", file=sys.stderr)
            workdir.commit(part, features, failed, {
                "seconds": round(time.time() - part_started, 3), "device": str(device),
                "batch_size": cfg.TEST.BATCH_SIZE, "num_workers": cfg.TEST.NUM_WORKERS})
            extracted += end - start
            failed_here += len(failed)
            elapsed = time.time() - extract_started
            rate = extracted / elapsed if elapsed > 0 else float("inf")
            eta = (todo_images - extracted) / rate if rate > 0 else 0
            tqdm.write(f"[{label}] committed part {part} (rows {start}-{end - 1}, {len(failed)} failed): "
                       f"{extracted}/{todo_images} images, {rate:.1f} img/s, ETA {_duration(eta)}", file=sys.stderr)

    done = workdir.done()
    missing = [part for part in range(total_parts) if part not in done]
    seconds = time.time() - started
    here = (f"{extracted} images extracted by this process ({failed_here} failed) in {seconds:.1f} s "
            f"({extracted / seconds if seconds > 0 else 0:.1f} img/s)")
    if missing:
        first = workdir.ranges[missing[0]]
        if args.merge_only:
            raise UserError(f"{len(missing)} of {total_parts} parts are not done yet (first: part {missing[0]}, "
                            f"rows {first[0]}-{first[1] - 1}): run the extraction without --merge-only first")
        print(f"done: {here}; {len(missing)} of {total_parts} parts are still being extracted by other "
              f"shards: the last one to finish writes {output} (or run again with --merge-only)", flush=True)
        return
    sidecar = merge(workdir, output)
    seconds = time.time() - started
    print(f"done: {here}; wrote {output} ({sidecar['count']} x {sidecar['dim']} float32, "
          f"{sidecar['failed_count']} failed images with zero rows) and {sidecar_path(output)} "
          f"in {seconds:.1f} s in total; the parts in {workdir.path} can be deleted", flush=True)


def main(argv=None):
    """Command-line entry point of extract_rop1m.py; returns the exit code (0, 2, 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process()
    parser = build_parser()
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    return exit_code_of(lambda: run(*parser.parse_known_args(argv)), typed_flags(FLAG_KEYS, argv))


if __name__ == "__main__":
    exit_with(main())
