"""Revisited Oxford / Paris ground truth: safe loading, validation and the E/M/H protocols.

Layout (as distributed by the revisitop project)::

    <data_dir>/<dataset>/gnd_<dataset>.pkl
    <data_dir>/<dataset>/jpg/<name>.jpg

The pickle is a dict with ``imlist`` (database names), ``qimlist`` (query names) and ``gnd`` (one
dict per query: ``bbx`` = [x1, y1, x2, y2] and lists ``easy``, ``hard``, ``junk`` of 0-based
indices into ``imlist``).

Pickles can run arbitrary code when loaded, so they are read with :class:`RestrictedUnpickler`,
which only resolves the handful of globals that plain containers and numpy arrays need.
"""

from __future__ import annotations

import builtins
import io
import math
import numbers
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import UserError, one_line, readable_file

DOWNLOAD_HINT = "download it from the revisitop project's data page (http://cmp.felk.cvut.cz/revisitop/)"

# Known datasets. Add an entry to support another revisitop-style dataset.
DATASETS: dict[str, dict[str, str]] = {
    "roxford5k": {"ext": ".jpg", "qext": ".jpg"},
    "rparis6k": {"ext": ".jpg", "qext": ".jpg"},
    "demo": {"ext": ".jpg", "qext": ".jpg"},  # demo/make_benchmark.py (docs/demo.md)
}

REQUIRED_KEYS = ("imlist", "qimlist", "gnd")
QUERY_KEYS = ("bbx", "easy", "hard", "junk")


# --------------------------------------------------------------------------- restricted unpickler

def _numpy_globals() -> dict[tuple[str, str], object]:
    """The numpy globals needed to rebuild arrays, dtypes and scalars, keyed by (module, name).

    Both spellings (numpy 1.x ``numpy.core`` and numpy 2.x ``numpy._core``) map to the objects of
    the installed numpy, so old and new pickles load without touching deprecated modules.
    """
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        # protocol-5 pickles of arrays (np.frombuffer(...).reshape(...)): pure reconstruction
        if hasattr(numeric, "_frombuffer"):
            table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


# Harmless constructors of plain containers / numbers that protocol 0-2 pickles may reference.
_BUILTINS = {name: getattr(builtins, name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray")}


def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    table = dict(_numpy_globals())
    for name, obj in _BUILTINS.items():
        table[("builtins", name)] = obj
        table[("__builtin__", name)] = obj
    # protocol-2 pickles written by Python 3 encode bytes (e.g. array data) as _codecs.encode(s, 'latin1')
    table[("_codecs", "encode")] = codecs.encode
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except container/number builtins and numpy arrays."""

    def __init__(self, file, path: str | os.PathLike = "<pickle>", **kwargs):
        kwargs.setdefault("encoding", "latin1")  # Python-2 pickles of numpy arrays need latin1
        super().__init__(file, **kwargs)
        self._path = str(path)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UserError(
                f"refusing to load {module}.{name} from {self._path}: ground-truth pickles may only "
                "contain lists, dicts, numbers and numpy arrays")
        if module == "_codecs" and name == "encode":
            return _safe_codecs_encode
        return obj

    def persistent_load(self, pid):  # pragma: no cover - never produced by plain pickles
        raise UserError(f"refusing to load a persistent id from {self._path}: ground-truth pickles "
                        "may only contain lists, dicts, numbers and numpy arrays")


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` restricted to the text encodings pickle itself uses (latin1/utf-8)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding, errors)


def safe_load_pickle(path: str | os.PathLike):
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; UserError if missing, corrupt or unsafe."""
    path = readable_file(Path(path), " (ground truth)")
    if not path.is_file():
        raise UserError(f"ground-truth file not found: {path}; {DOWNLOAD_HINT}")
    data = path.read_bytes()
    if not data:
        raise UserError(f"ground-truth file is empty: {path}; {DOWNLOAD_HINT} again")
    try:
        return RestrictedUnpickler(io.BytesIO(data), path=path).load()
    except UserError:
        raise
    except Exception as exc:  # a malformed stream can raise almost anything (EOFError, ValueError, ...)
        raise UserError(f"corrupt or truncated ground-truth pickle {path} "
                        f"({type(exc).__name__}: {one_line(exc)}); {DOWNLOAD_HINT} again") from None


# --------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class Gnd:
    """Validated ground truth of one revisitop dataset.

    ``gnd[i]`` is ``{'bbx': (x1, y1, x2, y2) floats, 'easy'|'hard'|'junk': int64 arrays}``.
    ``cfg['imlist']``-style item access is supported for code written against the official dict.
    """

    dataset: str
    gnd_path: Path
    image_dir: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]
    db_paths: list[str]
    query_paths: list[str]

    @property
    def bboxes(self) -> list[tuple[float, float, float, float]]:
        return [g["bbx"] for g in self.gnd]

    @property
    def n(self) -> int:
        return len(self.imlist)

    @property
    def nq(self) -> int:
        return len(self.qimlist)

    def __getitem__(self, key: str):
        return getattr(self, key)


def _invalid(path, what: str) -> UserError:
    return UserError(f"invalid ground-truth file {path}: {what}; {DOWNLOAD_HINT} again")


def _check_names(raw, key, path) -> list[str]:
    names = raw[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(s, str) for s in names):
        raise _invalid(path, f"'{key}' must be a list of image names")
    return list(names)


def _check_indices(values, n_db: int, where: str, path) -> np.ndarray:
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, (list, tuple)):
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in values):
            raise _invalid(path, f"{where} must contain only integer indices")
        try:
            arr = np.asarray(values, dtype=np.int64)
        except OverflowError:  # a Python int beyond int64: certainly not a database index
            raise _invalid(path, f"{where} has an index beyond the 64-bit range") from None
    else:
        raise _invalid(path, f"{where} must be a list of integer indices, got {type(values).__name__}")
    if arr.ndim != 1:
        raise _invalid(path, f"{where} must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise _invalid(path, f"{where} must contain integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_db):
        bad = int(arr[(arr < 0) | (arr >= n_db)][0])
        raise _invalid(path, f"{where} has index {bad} outside [0, {n_db}) (the database size)")
    return arr


def _check_bbx(bbx, where: str, path) -> tuple[float, float, float, float]:
    if isinstance(bbx, np.ndarray):
        bbx = bbx.tolist()
    if (not isinstance(bbx, (list, tuple)) or len(bbx) != 4
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in bbx)):
        raise _invalid(path, f"{where} must be 4 numbers [x1, y1, x2, y2], got {bbx!r}")
    try:
        box = tuple(float(v) for v in bbx)
    except OverflowError:  # an integer too large for a float
        raise _invalid(path, f"{where} has a coordinate beyond the float range") from None
    if not all(math.isfinite(v) for v in box):
        raise _invalid(path, f"{where} has a non-finite coordinate: {list(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)  # the official crop truncates with int()
    if min(x1, y1, x2, y2) < 0:
        raise _invalid(path, f"{where} has a negative coordinate: {list(box)}")
    if x2 <= x1 or y2 <= y1:
        raise _invalid(path, f"{where} {list(box)} is empty after int() truncation "
                             f"(x {x1}:{x2}, y {y1}:{y2})")
    return box


def validate_gnd(raw, path) -> tuple[list[str], list[str], list[dict]]:
    """Check an unpickled ground-truth object; return (imlist, qimlist, normalised gnd)."""
    if not isinstance(raw, dict):
        raise _invalid(path, f"expected a dict with keys {list(REQUIRED_KEYS)}, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _invalid(path, f"missing key(s) {missing}")
    imlist = _check_names(raw, "imlist", path)
    qimlist = _check_names(raw, "qimlist", path)
    for key, names in (("imlist", imlist), ("qimlist", qimlist)):
        if not names:  # nothing to search or nothing to evaluate: stop before any extraction
            raise _invalid(path, f"'{key}' is empty (no {'database' if key == 'imlist' else 'query'} images)")
    gnd_raw = raw["gnd"]
    if not isinstance(gnd_raw, (list, tuple)):
        raise _invalid(path, f"'gnd' must be a list of per-query dicts, got {type(gnd_raw).__name__}")
    if len(gnd_raw) != len(qimlist):
        raise _invalid(path, f"len(gnd)={len(gnd_raw)} does not match len(qimlist)={len(qimlist)}")
    n_db = len(imlist)
    gnd = []
    for i, g in enumerate(gnd_raw):
        if not isinstance(g, dict):
            raise _invalid(path, f"gnd[{i}] must be a dict, got {type(g).__name__}")
        missing = [k for k in QUERY_KEYS if k not in g]
        if missing:
            raise _invalid(path, f"gnd[{i}] is missing key(s) {missing}")
        entry = {"bbx": _check_bbx(g["bbx"], f"gnd[{i}]['bbx']", path)}
        for k in ("easy", "hard", "junk"):
            entry[k] = _check_indices(g[k], n_db, f"gnd[{i}]['{k}']", path)
        gnd.append(entry)
    return imlist, qimlist, gnd


# --------------------------------------------------------------------------- public API

def check_dataset(dataset: str) -> dict[str, str]:
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: known datasets are {sorted(DATASETS)}")
    return DATASETS[dataset]


def gnd_file(data_dir: str | os.PathLike, dataset: str) -> Path:
    """``<data_dir>/<dataset>/gnd_<dataset>.pkl``."""
    check_dataset(dataset)
    return Path(data_dir) / dataset / f"gnd_{dataset}.pkl"


def load_gnd(data_dir: str | os.PathLike, dataset: str,
             gnd_path: str | os.PathLike | None = None) -> Gnd:
    """Load and validate ``<data_dir>/<dataset>/gnd_<dataset>.pkl``.

    ``gnd_path`` overrides where the pickle is read from (images are still expected under
    ``<data_dir>/<dataset>/jpg``). Image files are not checked here.
    """
    info = check_dataset(dataset)
    path = Path(gnd_path) if gnd_path is not None else gnd_file(data_dir, dataset)
    raw = safe_load_pickle(path)
    imlist, qimlist, gnd = validate_gnd(raw, path)
    image_dir = Path(data_dir) / dataset / "jpg"
    return Gnd(
        dataset=dataset,
        gnd_path=path,
        image_dir=image_dir,
        imlist=imlist,
        qimlist=qimlist,
        gnd=gnd,
        db_paths=[str(image_dir / (name + info["ext"])) for name in imlist],
        query_paths=[str(image_dir / (name + info["qext"])) for name in qimlist],
    )


def protocols(gnd) -> dict[str, list[dict[str, np.ndarray]]]:
    """The three revisitop protocols, as in revisitop's example_evaluate.py.

    ``gnd`` is a :class:`Gnd` or a list of per-query dicts with easy/hard/junk.
    Returns ``{'E': [...], 'M': [...], 'H': [...]}``, each a list of ``{'ok', 'junk'}`` int64 arrays:
    Easy ok=easy junk=junk+hard; Medium ok=easy+hard junk=junk; Hard ok=hard junk=junk+easy.
    Arrays are concatenated exactly like the official code (no de-duplication).
    """
    entries = gnd.gnd if isinstance(gnd, Gnd) else gnd

    def arr(x):
        return np.asarray(x, dtype=np.int64).reshape(-1)

    out: dict[str, list[dict[str, np.ndarray]]] = {"E": [], "M": [], "H": []}
    for g in entries:
        easy, hard, junk = arr(g["easy"]), arr(g["hard"]), arr(g["junk"])
        out["E"].append({"ok": easy, "junk": np.concatenate([junk, hard])})
        out["M"].append({"ok": np.concatenate([easy, hard]), "junk": junk})
        out["H"].append({"ok": hard, "junk": np.concatenate([junk, easy])})
    return out
