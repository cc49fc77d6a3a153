"""Loading saved feature files for feature-only reranking (rerank_features.py, sweep.py): the
``TEST.SAVE_FEATURES`` npz of test.py or .npy / .npz arrays, initial ranks, and the ground truth
they are evaluated against, all checked with one-line user errors. Functions taking ``args`` read
the argparse namespace of those entry points (features, query, db, ranks, gnd, images, gldv2,
gldv2_solution)."""

from pathlib import Path

import numpy as np

from errors import UserError, readable_file


def _open(path):
    """The array of a .npy, or {name: array} of every member of an .npz, read whole inside the
    guard: an npz member holding Python objects (refused without unpickling) or damaged bytes is
    found here, not when a caller first touches it."""
    path = readable_file(Path(path))
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            return {name: data[name] for name in data.files}
    except Exception as error:  # numpy raises many types on foreign bytes
        objects = "Object arrays" in str(error) or "allow_pickle" in str(error)
        raise UserError(f"cannot read {path} as .npy / .npz ("
                        + ("it holds Python objects (dtype object), which are never unpickled: save float "
                           "and integer arrays only" if objects else
                           f"{type(error).__name__}: {' '.join(str(error).split())[:160]}") + ")") from None


def load_array(path, key=None):
    """An array from .npy, or from .npz (``key`` when present, else its only array)."""
    data = _open(path)
    if isinstance(data, np.ndarray):
        return data
    if key is not None and key in data:
        return data[key]
    if len(data) == 1:
        return next(iter(data.values()))
    raise UserError(f"{path} holds {list(data)}: expected key {key!r} or a single array")


FLOAT_DTYPES = ("float16", "float32", "float64")
NORM_TOLERANCE = 1e-2   # |row norm - 1| allowed for query / database rows
NORM_CHUNK = 8192       # rows per step of the norm check (one float64 block of this many rows)


def load_features(args):
    """(Q, X, initial ranks or None) as numpy arrays, checked. float16 features are upcast to float32
    (their products would overflow); rows must be L2-normalised (``check_unit_rows``)."""
    ranks, ranks_source = None, None
    if args.features:
        data = _open(args.features)
        if isinstance(data, np.ndarray) or "Q" not in data or "X" not in data:
            raise UserError(f"{args.features} is not a test.py features file: expected an npz with Q and X")
        Q, X = data["Q"], data["X"]
        if "ranks_global" in data and not args.ranks:
            ranks, ranks_source = data["ranks_global"], f"{args.features} (ranks_global)"
            if ranks.ndim == 2 and X.ndim == 2 and ranks.shape[0] != X.shape[0]:
                # test.py saves full rankings, except with SupG.onemeval (top TEST.TOPK over X + R1M)
                raise UserError(f"{args.features} holds the top {ranks.shape[0]} of a ranking over more "
                                f"than its {X.shape[0]} database features (a SupG.onemeval run): the R1M "
                                "distractors are not in it, so it cannot be reranked from Q and X alone")
        sources = (f"{args.features} (Q)", f"{args.features} (X)")
    else:
        Q, X = load_array(args.query, "Q"), load_array(args.db, "X")
        sources = (args.query, args.db)
    if args.ranks:
        ranks, ranks_source = load_array(args.ranks, "ranks_global"), args.ranks
    Q = check_float_matrix(Q, "query", sources[0])
    X = check_float_matrix(X, "database", sources[1])
    if Q.shape[1] != X.shape[1]:
        raise UserError(f"query and database features differ in size: {Q.shape[1]} vs {X.shape[1]}")
    if ranks is not None:
        ranks = check_ranks(ranks, Q.shape[0], X.shape[0], ranks_source)
    for name, a, source in (("query", Q, sources[0]), ("database", X, sources[1])):  # values after shapes
        check_unit_rows(a, name, source)
    return Q, X, ranks


def check_float_matrix(a, name, source):
    """A 2-D float16 / float32 / float64 array of finite values; float16 comes back as float32."""
    if a.ndim != 2 or a.dtype.kind != "f":
        raise UserError(f"{name} features {source} must be a 2-D float array, got shape {a.shape} dtype {a.dtype}")
    if a.dtype.name not in FLOAT_DTYPES:
        raise UserError(f"{name} features {source} have dtype {a.dtype.name}: save them as float32 "
                        "(float16, float32 and float64 are accepted)")
    if a.shape[0] == 0 or a.shape[1] == 0:  # nothing to rank or rerank: no result may be reported
        raise UserError(f"{name} features {source} are empty (shape {a.shape[0]} x {a.shape[1]}): give at least "
                        f"one {name} row of at least one value")
    if not np.isfinite(a).all():
        raise UserError(f"{name} features {source} contain NaN or infinite values")
    return a.astype(np.float32) if a.dtype == np.float16 else a


def row_norms(a, chunk=NORM_CHUNK):
    """Euclidean norm of every row, in float64 and without overflow (rows are scaled by their
    largest |value| first), a block of rows at a time."""
    norms = np.empty(a.shape[0], np.float64)
    for start in range(0, a.shape[0], chunk):
        block = np.abs(a[start:start + chunk], dtype=np.float64)
        peak = block.max(axis=1, initial=0.0)
        block /= np.where(peak > 0, peak, 1.0)[:, None]
        norms[start:start + chunk] = peak * np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def check_unit_rows(a, name, source, tolerance=NORM_TOLERANCE):
    """Refuse rows whose L2 norm differs from 1 by more than `tolerance` (all-zero rows included):
    cosine ranking and SuperGlobal reranking assume unit rows, and large norms overflow float32
    similarities into Inf, which would rank in index order and still print an mAP."""
    if not a.shape[0] or not a.shape[1]:
        return
    norms = row_norms(a)
    bad = np.abs(norms - 1.0) > tolerance
    if bad.any():
        zero = int((norms == 0).sum())
        raise UserError(f"{name} features {source} are not L2-normalised: row norms range from "
                        f"{norms.min():.4g} to {norms.max():.4g} ({int(bad.sum())} of {len(norms)} rows differ from "
                        f"1 by more than {tolerance:g}, first row {int(np.argmax(bad))}"
                        f"{f', {zero} all-zero' if zero else ''}): L2-normalise every row (x / ||x||) before "
                        f"reranking{', and drop or replace the all-zero rows' if zero else ''}")


def check_ranks(ranks, nq, n, source="ranks"):
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise UserError(f"ranks {source} must be a 2-D integer array (N' x nq), got shape {ranks.shape} "
                        f"dtype {ranks.dtype}")
    if ranks.shape[1] != nq and ranks.shape[0] == nq:
        ranks = ranks.T  # query-major (nq x N'): unambiguous, accept it
    if ranks.shape[1] != nq:
        raise UserError(f"ranks have {ranks.shape[1]} columns for {nq} queries (expected N' x nq)")
    if ranks.shape[0] == 0:
        raise UserError(f"ranks {source} are empty (shape {ranks.shape[0]} x {ranks.shape[1]}): give at least "
                        "one ranked database index per query (N' x nq, N' >= 1), or leave the ranks out to "
                        "rank by X Q^T")
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
    from test.data.gnd import protocols

    return protocols(load_ground_truth_lists(args, nq, n)[2])


def load_ground_truth_lists(args, nq, n):
    """(database names, query names, gnd entries) of --gnd; sizes must match the features."""
    from test.data.gnd import safe_load_pickle, validate_gnd

    path = Path(args.gnd)
    if path.suffix.lower() in (".csv", ".json"):
        if not args.images:
            raise UserError(f"{path} is a custom ground truth: give its image folder with --images")
        from test.data.custom import load_custom_dataset

        gnd = load_custom_dataset(args.images, path)
        imlist, qimlist, entries = gnd.imlist, gnd.qimlist, gnd.gnd
    else:
        imlist, qimlist, entries = validate_gnd(safe_load_pickle(path), path)
    if len(qimlist) != nq or len(imlist) != n:
        raise UserError(f"{path} has {len(qimlist)} queries and {len(imlist)} database images but the "
                        f"features have {nq} and {n}")
    return imlist, qimlist, entries


def load_gldv2_checked(args, nq, n):
    from test.data.gldv2 import load_gldv2

    gld = load_gldv2(args.gldv2, args.gldv2_solution)
    if len(gld.query_ids) != nq or len(gld.index_ids) != n:
        raise UserError(f"{args.gldv2} has {len(gld.query_ids)} scored queries and {len(gld.index_ids)} index "
                        f"images but the features have {nq} and {n}")
    return gld
