"""PNG plots of the report, fed by plain arrays (matplotlib is the optional "report" extra).

Each function returns the path written, or ``None`` (with the reason in
:data:`MISSING`) when matplotlib cannot be imported; the tables and the JSON
never depend on it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["matplotlib_missing", "plot_deviation", "plot_training", "plot_test_predictions",
           "set_width_axis", "LOSS_FLOOR"]

#: Marker and line style cycles: series that coincide (GD's ``K = Theta / N`` and the NTK
#: have the same relative deviation) stay distinguishable.
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")

#: Losses below this are drawn at it on the log axis (the theory at
#: ``eta = 1/alpha`` is exactly 0 after one step).
LOSS_FLOOR = 1e-12


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def matplotlib_missing() -> str | None:
    """``None`` if plots can be drawn, else the message to print."""
    if _pyplot() is None:
        return ("matplotlib is not installed: plots skipped (tables and results.json are written); "
                "install the 'report' extra: pip install -e '.[report]'")
    return None


def set_width_axis(ax, widths):
    """Log-scaled width axis ticked and labelled at exactly ``widths`` (no ``2 x 10^2`` minor labels)."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([float(w) for w in widths])
    ax.set_xticklabels([str(int(w)) for w in widths])
    ax.set_xlabel("width M")


def _grid(n: int):
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    return rows, cols


def plot_deviation(path, widths, series: dict, title: str = ""):
    """Log-log deviation against width, one line per entry, and the ``M^{-1/2}`` reference.

    ``series``: label -> ``(mean, std, slope or None)`` with arrays over ``widths``.
    Entries without a positive finite mean at every width are skipped; the
    reference line is anchored on the entries that have a slope (exact-at-any-width
    entries are passed with ``slope=None`` and sit at the damping level).
    """
    plt = _pyplot()
    if plt is None:
        return None
    w = np.asarray(widths, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 5))
    anchors = []
    for k, (label, (mean, std, slope)) in enumerate(series.items()):
        mean = np.asarray(mean, dtype=float)
        std = np.asarray(std, dtype=float)
        if not np.all(np.isfinite(mean)) or np.any(mean <= 0):
            continue
        text = (f"{label} (slope {slope:+.2f})" if slope is not None and np.isfinite(slope)
                else f"{label} (exact: damping level)")
        ax.errorbar(w, mean, yerr=np.minimum(std, 0.999 * mean), marker=_MARKERS[k % len(_MARKERS)],
                    linestyle=_LINESTYLES[k % len(_LINESTYLES)], capsize=3, label=text,
                    markersize=7 if k % 2 else 5, alpha=0.9)
        if slope is not None and np.isfinite(slope):  # anchor the reference on the width-dependent ones
            anchors.append(float(np.exp(np.mean(np.log(mean * np.sqrt(w))))))
    if anchors:
        ref = float(np.exp(np.mean(np.log(anchors))))
        ax.plot(w, ref / np.sqrt(w), "k:", lw=1.5, label=r"reference $\propto M^{-1/2}$")
    set_width_axis(ax, widths)
    ax.set_yscale("log")
    ax.set_ylabel("relative Frobenius deviation (mean over seeds, bars: std)")
    ax.set_title(title or "deviation vs width", fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(path, panels: dict, title: str = ""):
    """Training loss vs step per method: finite network (markers) vs theory (lines).

    ``panels``: method label -> list of ``(lr label, finite_loss, theory_loss)``;
    values below :data:`LOSS_FLOOR` are drawn at the floor.
    """
    plt = _pyplot()
    if plt is None:
        return None
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (label, curves) in zip(axes.flat, panels.items()):
        for k, (lr_label, finite, theory) in enumerate(curves):
            color = f"C{k}"
            t = np.arange(len(finite))
            ax.plot(t, np.maximum(theory, LOSS_FLOOR), "-", color=color, label=f"theory, {lr_label}")
            ax.plot(t, np.maximum(finite, LOSS_FLOOR), "o", color=color, label=f"finite, {lr_label}")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(np.arange(max(len(c[1]) for c in curves)))
        ax.set_xlabel("step t")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or r"training loss: finite network vs $(1-\alpha\eta)^{2t} L_0$ "
                 f"(values < {LOSS_FLOOR:g} drawn at {LOSS_FLOOR:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_test_predictions(path, panels: dict, title: str = ""):
    """Scatter of finite-width test outputs against the infinite-width predictor, per method.

    ``panels``: method label -> ``(predicted, finite)`` arrays of the same shape.
    """
    plt = _pyplot()
    if plt is None:
        return None
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.6 * rows), squeeze=False)
    for ax, (label, (pred, finite)) in zip(axes.flat, panels.items()):
        pred = np.ravel(pred)
        finite = np.ravel(finite)
        lo = float(min(pred.min(), finite.min()))
        hi = float(max(pred.max(), finite.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="finite = predicted")
        ax.plot(pred, finite, "o", ms=4, label="test inputs")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("infinite-width prediction")
        ax.set_ylabel("finite network")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or "test outputs after training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
