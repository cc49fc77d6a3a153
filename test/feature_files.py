"""Loading saved feature files for feature-only reranking (rerank_features.py, sweep.py): the
``TEST.SAVE_FEATURES`` npz of test.py or .npy / .npz arrays, initial ranks, and the ground truth
they are evaluated against, all checked with one-line user errors. Functions taking ``args`` read
the argparse namespace of those entry points (features, query, db, ranks, gnd, images, gldv2,
gldv2_solution)."""

from pathlib import Path

import numpy as np

from errors import UserError


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
    if ranks.size and ranks.min() < 0:
        raise UserError(f"ranks hold the negative database index {int(ranks.min())}: indices run from 0 to {n - 1}")
    if ranks.size and ranks.max() >= n:
        raise UserError(f"ranks hold database index {int(ranks.max())} but there are only {n} database "
                        "features (ranks of a SupG.onemeval run index the R1M distractors too: "
                        "they cannot be reranked from Q and X alone)")
    repeated = (np.diff(np.sort(ranks, axis=0), axis=0) == 0).any(axis=0)
    if repeated.any():
        raise UserError(f"ranks list a database index twice for {int(repeated.sum())} queries (first: query "
                        f"{int(np.argmax(repeated))}): each column must rank distinct database images")
    return np.ascontiguousarray(ranks.astype(np.int64))


def load_ground_truth(args, nq, n):
    """The evaluation protocols of --gnd; sizes must match the features."""
    from test.gnd import protocols

    return protocols(load_ground_truth_lists(args, nq, n)[2])


def load_ground_truth_lists(args, nq, n):
    """(database names, query names, gnd entries) of --gnd; sizes must match the features."""
    from test.gnd import safe_load_pickle, validate_gnd

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
    return imlist, qimlist, entries


def load_gldv2_checked(args, nq, n):
    from test.gldv2 import load_gldv2

    gld = load_gldv2(args.gldv2, args.gldv2_solution)
    if len(gld.query_ids) != nq or len(gld.index_ids) != n:
        raise UserError(f"{args.gldv2} has {len(gld.query_ids)} scored queries and {len(gld.index_ids)} index "
                        f"images but the features have {nq} and {n}")
    return gld
