"""Tables, ``report.md`` and ``results.json`` of the derivation checker.

``results.json`` schema (version 1)::

    {
      "schema": "ngdsym.derivations/1",
      "command": str, "passed": bool, "wall_time_s": float,
      "config": {"setup": {...}, "widths": [int], "seeds": int, "damping": float,
                 "kfac_damping": str, "steps": int, "criteria": {...}},
      "methods": {method: {"label": str, "alpha_symbolic": str, "alpha_latex": str|null,
                  "alpha_reason": str, "alpha_value": [float|null per width],
                  "<quantity>": {"mean": [...], "std": [...], "per_seed": [[...]]} for
                  alpha_measured, deviation, isotropy_deviation, condition_number, seconds,
                  dynamics_error, test_error,
                  "notes": [str], "error": str|null}},
      "layer_kernels": {"names": [str], "mean": [[...]], "std": [[...]]} | null,
      "extras": {name: {...}},
      "checks": [{"name", "passed", "verdict", "kind", "criterion", "detail", "rate", "extra"}],
      "plots": {name: file name}, "plots_skipped": str|null
    }

NaN is written as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["markdown_table", "fmt", "fmt_pm", "to_jsonable", "write_json", "SCHEMA"]

SCHEMA = "ngdsym.derivations/1"


def fmt(x, digits: int = 3) -> str:
    """Compact number: fixed for moderate magnitudes, scientific otherwise; '-' for NaN/None.

    >>> fmt(1.0), fmt(0.00012345), fmt(float("nan")), fmt(4097.0)
    ('1', '1.23e-04', '-', '4097')
    """
    if x is None:
        return "-"
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return f"{x:.{digits - 1}e}"


def fmt_pm(mean, std, digits: int = 3) -> str:
    """``mean ± std`` (std omitted when 0 or NaN)."""
    m = fmt(mean, digits)
    if std is None or not math.isfinite(float(std)) or float(std) == 0 or m == "-":
        return m
    return f"{m} ± {fmt(std, 2)}"


def markdown_table(headers, rows) -> str:
    """A GitHub-markdown table (also readable as plain text).

    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    headers = [str(h) for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def to_jsonable(obj):
    """Convert NumPy values, dataclasses, enums and NaN into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (int, str)) or obj is None:
        return obj
    if hasattr(obj, "value") and isinstance(getattr(obj, "value"), str):  # str enums
        return obj.value
    return str(obj)


def write_json(path, data) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def stats(a) -> dict:
    """``{"mean", "std", "per_seed"}`` of an ``(n_widths, n_seeds)`` array (NaN-aware)."""
    a = np.asarray(a, dtype=float)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(a, axis=1)
            std = np.nanstd(a, axis=1)
    return dict(mean=mean, std=std, per_seed=a)
