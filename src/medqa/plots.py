"""Report figures (matplotlib, Agg backend, written atomically): reliability diagram, letter bias, training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medqa.io import atomic_write_bytes


def _figure(width: float = 5.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: count, mean confidence, accuracy (the data behind the diagram and ECE)."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (conf >= lo) & (conf <= hi) if i == 0 else (conf > lo) & (conf <= hi)
        n = int(sel.sum())
        out.append({"lo": float(lo), "hi": float(hi), "n": n,
                    "confidence": float(conf[sel].mean()) if n else 0.0,
                    "accuracy": float(correct[sel].mean()) if n else 0.0})
    return out


def reliability_diagram(conf: np.ndarray, correct: np.ndarray, path: str | Path, title: str = "") -> Path:
    bins = reliability_bins(conf, correct)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=0.09, color="#4C72B0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.scatter([b["confidence"] for b in bins if b["n"]], [b["accuracy"] for b in bins if b["n"]],
               color="#DD8452", zorder=3, label="bin mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max option probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def letter_bias(gold: dict[str, int], pred: dict[str, int], path: str | Path, title: str = "") -> Path:
    letters = list(gold)
    x = np.arange(len(letters))
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.2, [gold[L] for L in letters], width=0.4, label="gold", color="#55A868")
    ax.bar(x + 0.2, [pred.get(L, 0) for L in letters], width=0.4, label="predicted", color="#C44E52")
    ax.set_xticks(x, letters)
    ax.set_ylabel("questions")
    ax.set_title(title or "Letter distribution: gold vs predicted")
    ax.legend(fontsize=8)
    return _save(fig, path)


def curve(xs: Sequence[float], ys: Sequence[float], path: str | Path, xlabel: str, ylabel: str, title: str,
          hline: float | None = None, hline_label: str = "") -> Path:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, color="#4C72B0")
    if hline is not None:
        ax.axhline(hline, linestyle="--", color="grey", label=hline_label)
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return _save(fig, path)


def training_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """Training loss (and held-out accuracy, when evaluated during training) against optimizer steps."""
    fig = _figure(8.0, 3.5)
    ax = fig.add_subplot(1, 2, 1)
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if loss:
        ax.plot(*zip(*loss), marker="." if len(loss) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (target tokens)")
    ax.set_title("loss")
    _held_out_panel(fig, [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r])
    return _save(fig, path)


def grpo_curves(curve: Sequence[dict], held_out: Sequence[tuple[int, float]], path: str | Path) -> Path:
    """GRPO: each reward's mean (correct, format, length, the weighted total) and held-out accuracy against steps."""
    fig = _figure(8.0, 3.5)
    ax = fig.add_subplot(1, 2, 1)
    for key in ("correct", "format", "length", "reward"):
        pts = [(c["step"], c[key]) for c in curve if key in c]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.set_title("GRPO rewards")
    ax.legend(fontsize=8)
    _held_out_panel(fig, held_out)
    return _save(fig, path)


def _held_out_panel(fig: Any, acc: Sequence[tuple[int, float]]) -> None:
    """The right-hand panel of the training figures: held-out accuracy (letter scoring) during training."""
    ax2 = fig.add_subplot(1, 2, 2)
    if acc:
        ax2.plot(*zip(*acc), marker="o", color="tab:green")
        ax2.set_ylim(0, 1)
    else:
        ax2.text(0.5, 0.5, "no held-out evaluation\n(train.eval_size 0)", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("held-out accuracy")
    ax2.set_title("held-out accuracy (letter scoring)")
