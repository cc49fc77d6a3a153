"""Write a tiny example in the real on-disk formats: revisitop datasets and a CVNet checkpoint.

    python tools/make_example.py example
    python test.py TEST.WEIGHTS example/weights TEST.DATA_DIR example/revisitop OUT_DIR example

The checkpoint holds random weights, so the mAP it gives means nothing: the example shows that the
pipeline runs end to end (loading, extraction, search, reranking, evaluation, log.txt).
For real numbers, bring the real data and weights (README: Reproducing the paper).
It never replaces a file: a folder that already holds weights/CVPR2022_CVNet_R50.pyth or
revisitop/roxford5k or revisitop/rparis6k is refused (exit code 2, one line).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from errors import quiet_interrupt_during_startup  # noqa: E402

if __name__ == "__main__":
    quiet_interrupt_during_startup()  # before the heavy imports below (torch: about a second)

from errors import ArgumentParser, UserError, exit_code_of, exit_with  # noqa: E402
from test.data.synthetic import write_checkpoint, write_revisitop  # noqa: E402

DATASETS = ("roxford5k", "rparis6k")
CHECKPOINT = Path("weights") / "CVPR2022_CVNet_R50.pyth"


def parse_args(argv):
    parser = ArgumentParser(prog="tools/make_example.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where to write weights/ and revisitop/ (must not hold them yet)")
    parser.add_argument("--db", type=int, default=24, help="database images per dataset (at least 1)")
    parser.add_argument("--queries", type=int, default=4, help="queries per dataset (at least 1)")
    args = parser.parse_args(argv)
    for flag in ("db", "queries"):
        if not 1 <= getattr(args, flag) <= 10000:
            raise UserError(f"--{flag} {getattr(args, flag)}: expected an integer from 1 to 10000")
    return args


def refuse_existing(folder: Path):
    """Stop before writing anything when the example would replace what the folder holds."""
    for path in [folder / CHECKPOINT] + [folder / "revisitop" / name for name in DATASETS]:
        if os.path.lexists(path):
            raise UserError(f"refusing to write the example into {folder}: {path} already exists and would be "
                            "replaced; choose a new or empty folder")


def make_example(args):
    folder = Path(args.folder)
    refuse_existing(folder)
    try:
        write_checkpoint(folder / CHECKPOINT, depth=50, seed=0)
        for seed, name in enumerate(DATASETS):
            write_revisitop(folder / "revisitop", name, n_db=args.db, n_query=args.queries, seed=seed)
    except OSError as error:
        raise UserError(f"cannot write the example into {folder}: {error.strerror or error}") from None
    print(f"wrote {folder / CHECKPOINT} and {folder}/revisitop/{{{','.join(DATASETS)}}}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return exit_code_of(lambda: make_example(parse_args(argv)))


if __name__ == "__main__":
    exit_with(main())
