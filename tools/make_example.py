"""Write a tiny example in the real on-disk formats: revisitop datasets and a CVNet checkpoint.

    python tools/make_example.py example
    python test.py TEST.WEIGHTS example/weights TEST.DATA_DIR example/revisitop OUT_DIR example

The checkpoint holds random weights, so the mAP it gives means nothing: the example shows that the
pipeline runs end to end (loading, extraction, search, reranking, evaluation, log.txt).
For real numbers, bring the real data and weights (README: Reproducing the paper).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test.data.synthetic import write_checkpoint, write_revisitop  # noqa: E402


def main():
    """Write the example's weights and datasets into the folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where to write weights/ and revisitop/")
    parser.add_argument("--db", type=int, default=24, help="database images per dataset")
    parser.add_argument("--queries", type=int, default=4, help="queries per dataset")
    args = parser.parse_args()
    folder = Path(args.folder)
    write_checkpoint(folder / "weights" / "CVPR2022_CVNet_R50.pyth", depth=50, seed=0)
    for seed, name in enumerate(["roxford5k", "rparis6k"]):
        write_revisitop(folder / "revisitop", name, n_db=args.db, n_query=args.queries, seed=seed)
    print(f"wrote {folder}/weights/CVPR2022_CVNet_R50.pyth and {folder}/revisitop/{{roxford5k,rparis6k}}")


if __name__ == "__main__":
    main()
