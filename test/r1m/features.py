"""Reading the R1M distractor features without copying them into memory: the official bare tensor,
extract_rop1m.py's output with its sidecar, or a float .npy, recognised from the file's first bytes
(docs/r1m_search.md lists the formats and checks). This module owns that file format: the sidecar's
name (`sidecar_path`) and keys live here only.

`load_r1m_features` returns a memory-mapped (N, D) matrix and what was found; every failure is one
:class:`errors.UserError` naming the file and the fix. NaN / Inf rows are scanned chunk by chunk, so
no second copy is made; zero rows (images that failed to decode) are allowed and counted.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from errors import UserError, is_int, readable_file

EXTRACT_HINT = "extract them with `python extract_rop1m.py` (see the README, +1M distractors)"
OVERRIDE_KEY = "SupG.distractors_check False"
SIDECAR_KEYS = ("fingerprint", "count", "dim", "failed")
SCAN_BYTES = 32 * 2 ** 20          # rows per step of the NaN / Inf scan: about this many bytes
_FLOAT_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_NUMPY = ("float16", "float32", "float64")   # not float128 / longdouble: torch has no such type
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class R1MFeatureInfo:
    """Where a distractor matrix came from and what the checks found."""

    path: Path
    format: str                    # 'torch' (zip, memory-mapped), 'torch-legacy' (in memory), 'npy'
    count: int                     # rows
    dim: int                       # descriptor dimension
    dtype: str                     # storage dtype, e.g. 'float32', 'float16'
    mmap: bool                     # rows are paged in from the file on demand
    sidecar: Path | None = None    # the JSON sidecar, when there is one
    fingerprint: dict | None = None  # the sidecar's descriptor fingerprint
    fingerprint_checked: bool = False  # compared equal with the expected fingerprint
    failed: tuple = field(default=())  # rows the extractor could not compute (sidecar 'failed')
    zero_rows: int | None = None   # all-zero rows, counted by the scan (None: not scanned)

    def describe(self) -> str:
        """One line for the log."""
        parts = [f"{self.count} x {self.dim} {self.dtype} ({self.format}"
                 f"{', memory-mapped' if self.mmap else ', in memory'}) from {self.path}"]
        if self.sidecar is not None:
            parts.append("fingerprint matches" if self.fingerprint_checked else "fingerprint not checked")
            parts.append(f"{len(self.failed)} failed image(s)")
        else:
            parts.append("no sidecar (official features: fingerprint not checked)")
        if self.zero_rows is not None:
            parts.append(f"{self.zero_rows} zero row(s)")
        return "distractors: " + ", ".join(parts)


def sidecar_path(path) -> Path:
    """``<path>.json``: the sidecar our extractor writes next to the features."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_r1m_features(path, expected_fingerprint=None, check=True, *, dim=None, scan=True):
    """Open the distractor matrix at ``path``; returns ``(matrix, info)``.

    ``matrix``: a CPU torch tensor (memory-mapped for zip ``.pth`` files) or a read-only numpy
    memmap, N1 x D, float16 / bfloat16 / float32 / float64 as stored (callers compute in float32).
    ``info``: a :class:`R1MFeatureInfo`.

    ``expected_fingerprint``: the current descriptor fingerprint; when given, ``check`` is true and
    the file has a sidecar, a differing sidecar fingerprint is refused (override: ``check=False``,
    i.e. ``SupG.distractors_check False``). Official files have no sidecar and are not checked.
    ``dim``: the database descriptor dimension, when known. ``scan``: read the whole matrix once,
    chunk by chunk, to refuse NaN / Inf and count zero rows (``search_with_r1m`` also
    refuses non-finite rows, so a caller may skip this pass).
    """
    path = Path(path)
    if not path.is_dir():
        readable_file(path, " (distractor features)")
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise UserError(f"distractor features {what}: {path}; {EXTRACT_HINT}, or set SupG.distractors_path")
    sidecar = sidecar_path(path)
    meta = _read_sidecar(sidecar, path) if readable_file(sidecar, f" (the sidecar of {path})").is_file() else None
    checked = False
    if meta is not None and check and expected_fingerprint is not None:
        _check_fingerprint(meta["fingerprint"], expected_fingerprint, path, sidecar)
        checked = True

    matrix, fmt, mapped = _open_matrix(path)
    count, found_dim, dtype = _validate_matrix(matrix, path, dim)
    if meta is not None and (meta["count"], meta["dim"]) != (count, found_dim):
        raise UserError(f"distractor features {path} hold {count} x {found_dim} but the sidecar {sidecar} "
                        f"says {meta['count']} x {meta['dim']} (incomplete or replaced file); {EXTRACT_HINT}")
    failed = tuple(meta["failed"]) if meta is not None else ()
    if any(not 0 <= i < count for i in failed):
        raise UserError(f"invalid sidecar {sidecar}: 'failed' lists rows outside [0, {count}); {EXTRACT_HINT}")
    zero_rows = scan_rows(matrix, path) if scan else None
    info = R1MFeatureInfo(path=path, format=fmt, count=count, dim=found_dim, dtype=dtype, mmap=mapped,
                          sidecar=sidecar if meta is not None else None,
                          fingerprint=meta["fingerprint"] if meta is not None else None,
                          fingerprint_checked=checked, failed=failed, zero_rows=zero_rows)
    return matrix, info


# --------------------------------------------------------------------------- sidecar

def _read_sidecar(sidecar: Path, path: Path) -> dict:
    def invalid(what):
        return UserError(f"invalid sidecar {sidecar} of {path}: {what}; {EXTRACT_HINT} again")

    readable_file(sidecar, f" (the sidecar of {path})")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise invalid(f"not readable JSON ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict):
        raise invalid("expected a JSON object")
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise invalid(f"missing key(s) {missing}")
    if not isinstance(meta["fingerprint"], dict):
        raise invalid("'fingerprint' must be an object")
    for key in ("count", "dim"):
        if not is_int(meta[key]) or meta[key] < 0:
            raise invalid(f"'{key}' must be a non-negative integer")
    # extract_rop1m.py writes {"index": row, "path": ..., "reason": ...} entries; plain rows also do
    failed = meta["failed"]
    if not isinstance(failed, list):
        raise invalid("'failed' must be a list")
    rows = [item.get("index") if isinstance(item, dict) else item for item in failed]
    if not all(is_int(i) for i in rows):
        raise invalid("'failed' must list row numbers (or objects with an integer 'index')")
    size = meta.get("output_bytes")
    if is_int(size) and size != path.stat().st_size:
        raise UserError(f"distractor features {path} have {path.stat().st_size} bytes but the sidecar {sidecar} "
                        f"says {size} (incomplete or replaced file); {EXTRACT_HINT}")
    return dict(meta, failed=rows)


def _check_fingerprint(found: dict, expected: dict, path: Path, sidecar: Path) -> None:
    from model.fingerprint import fingerprint_differences

    differences = fingerprint_differences(expected, found)
    if differences:
        raise UserError(f"distractor features {path} were extracted with a different descriptor "
                        f"(sidecar {sidecar}; found vs current: {'; '.join(differences)}); re-extract them "
                        f"with the current settings, or pass {OVERRIDE_KEY} to use them anyway")


# --------------------------------------------------------------------------- matrix

def _open_matrix(path: Path):
    """(matrix, format, memory-mapped?) according to the file's magic bytes."""
    readable_file(path, " (distractor features)")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if not magic:
        raise UserError(f"distractor features file is empty: {path}; {EXTRACT_HINT}")
    try:
        if magic.startswith(_NPY_MAGIC):
            return _load_npy(path), "npy", True
        if magic.startswith(_ZIP_MAGIC):
            _refuse_npz(path)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True), "torch", True
            except RuntimeError:
                pass  # e.g. a zip torch cannot map; read it into memory below
            return torch.load(path, map_location="cpu", weights_only=True), "torch", False
        # legacy (pre-1.6, non-zip) torch.save files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True), "torch-legacy", False
    except UserError:
        raise
    except Exception as exc:  # corrupt / truncated / unsafe pickles raise many exception types
        raise UserError(f"cannot read distractor features {path} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]}); expected a torch.save'd N x D tensor or a "
                        f".npy float matrix; {EXTRACT_HINT}") from None


def _load_npy(path: Path):
    """np.load without pickles, memory-mapped; an object array (pickled Python objects, which could
    run code when loaded) is refused by numpy with a ValueError that we word for the user."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" not in str(exc).lower() and "pickle" not in str(exc).lower():
            raise
        raise UserError(f"distractor features {path} hold Python objects (dtype object), which are not loaded "
                        f"because unpickling them could run code; expected an N x D float matrix; "
                        f"{EXTRACT_HINT}") from None


def _refuse_npz(path: Path):
    """An .npz archive (a zip of .npy members) is not a torch file: say so instead of torch's error."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # let torch.load report the damaged file
    if names and all(name.endswith(".npy") and "/" not in name for name in names):
        shown = ", ".join(name[:-4] for name in names[:5]) + (", ..." if len(names) > 5 else "")
        raise UserError(f"distractor features {path} are an .npz archive (arrays {shown}); save the N x D float "
                        f"matrix alone with np.save (.npy) or torch.save (.pth); {EXTRACT_HINT}")


def _validate_matrix(matrix, path: Path, dim):
    if isinstance(matrix, torch.Tensor):
        if matrix.layout != torch.strided:  # sparse COO / CSR ...: no row slicing, no dense search
            raise UserError(f"distractor features {path} are a {str(matrix.layout).replace('torch.', '')} "
                            f"tensor, not a dense N x D matrix; save it dense (torch.save(t.to_dense(), ...)); "
                            f"{EXTRACT_HINT}")
        is_float, dtype = matrix.dtype in _FLOAT_TORCH, str(matrix.dtype).replace("torch.", "")
    elif isinstance(matrix, np.ndarray):
        is_float, dtype = matrix.dtype.name in _FLOAT_NUMPY, str(matrix.dtype)
    else:
        kind = type(matrix).__name__
        if isinstance(matrix, dict):
            kind += f" with keys {sorted(map(str, matrix))[:5]}"
        raise UserError(f"distractor features {path} hold a {kind}, not an N x D float matrix; {EXTRACT_HINT}")
    if matrix.ndim != 2:
        raise UserError(f"distractor features {path} have shape {tuple(matrix.shape)}, not N x D; {EXTRACT_HINT}")
    if not is_float:
        allowed = ", ".join(_FLOAT_NUMPY if isinstance(matrix, np.ndarray)
                            else (str(t).replace("torch.", "") for t in _FLOAT_TORCH))
        raise UserError(f"distractor features {path} have dtype {dtype}, not one of {allowed}: save them as "
                        f"float32 or float16; {EXTRACT_HINT}")
    count, found_dim = (int(s) for s in matrix.shape)
    if count == 0 or found_dim == 0:
        raise UserError(f"distractor features {path} are empty (shape {count} x {found_dim}); {EXTRACT_HINT}")
    if dim is not None and found_dim != dim:
        raise UserError(f"distractor features {path} have dimension {found_dim} but the database descriptors "
                        f"have {dim} (features of another model or head?); {EXTRACT_HINT} with the same model")
    return count, found_dim, dtype


def scan_rows(matrix, path="distractors", scan_bytes=SCAN_BYTES) -> int:
    """Refuse NaN / Inf in ``matrix`` (UserError with the number of bad rows); return the number
    of all-zero rows. Reads the matrix once, a block of rows at a time (one block-sized temporary)."""
    count, dim = matrix.shape
    step = max(1, scan_bytes // max(1, dim * 4))
    bad = zero = 0
    for start in range(0, count, step):
        block = matrix[start:start + step]
        # the max of |x| per row is NaN / Inf iff the row has a NaN / Inf, and 0 iff the row is zero
        if isinstance(block, torch.Tensor):
            peak = block.abs().amax(dim=1)
            bad += int((~torch.isfinite(peak)).sum())
            zero += int((peak == 0).sum())
        else:
            with np.errstate(invalid="ignore"):
                peak = np.abs(block).max(axis=1)
            bad += int((~np.isfinite(peak)).sum())
            zero += int((peak == 0).sum())
    if bad:
        raise UserError(f"distractor features {path}: {bad} of {count} rows contain NaN or Inf values; "
                        f"{EXTRACT_HINT} again")
    return zero
