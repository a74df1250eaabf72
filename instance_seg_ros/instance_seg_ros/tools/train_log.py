"""``isr train``'s run log: ``losses.jsonl`` / ``metrics.jsonl``, smoothed losses, the progress bar and
``training_curves.png``.

Every record is one JSON line (non-finite floats written as ``null``); a resumed run drops the lines past its
checkpoint's iteration and appends from there.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

__all__ = [
    "LOSS_KEYS",
    "RunLog",
    "Smoother",
    "append_jsonl",
    "json_safe",
    "plot_curves",
    "progress_bar",
    "read_jsonl",
    "truncate_jsonl",
]

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask",
             "loss_amodal_mask", "loss_occlusion")


def progress_bar(**kw):
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **kw)


# =========================================================================== JSON lines
def json_safe(v: Any) -> Any:
    """``v`` with non-finite floats (also inside dicts, lists, tuples) replaced by ``None``."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(record)) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` (none when it does not exist); a line cut by a crash is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return out


def truncate_jsonl(path: Path, max_iteration: int) -> None:
    """Drop lines past ``max_iteration`` (a resumed run rewrites them)."""
    rows = read_jsonl(path)
    if rows:
        keep = [r for r in rows if int(r.get("iteration", 0)) <= max_iteration]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


# =========================================================================== losses
class Smoother:
    """Running means of the last ``window`` values per key."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.values: dict[str, deque] = {}

    def update(self, **kv: float) -> None:
        for k, v in kv.items():
            self.values.setdefault(k, deque(maxlen=self.window)).append(float(v))

    def mean(self, key: str) -> float:
        v = self.values.get(key)
        return sum(v) / len(v) if v else float("nan")

    def means(self) -> dict[str, float]:
        return {k: self.mean(k) for k in self.values}


class RunLog:
    """The per-iteration log of one process: smoothed losses, the progress bar and (``write``: rank 0)
    ``losses.jsonl`` every ``log_every`` iterations and at ``iters``."""

    def __init__(self, out: Path, *, iters: int, start_iter: int, log_every: int, write: bool, quiet: bool) -> None:
        self.path = Path(out) / "losses.jsonl"
        self.iters, self.log_every, self.write = iters, log_every, write
        self.smooth = Smoother(window=max(log_every, 20))
        self.t_start = time.perf_counter()
        self.iter_times: deque = deque(maxlen=50)
        self.bar = progress_bar(total=iters, initial=start_iter, desc="train", disable=not write or quiet)

    def step(self, it: int, *, total: float, losses: dict[str, float], lr: float, t_data: float,
             t_iter: float, now: float) -> None:
        """Record iteration ``it`` (1-based: the count of iterations done), whose loss was ``total``."""
        self.iter_times.append(t_iter)
        self.smooth.update(loss=total, data_s=t_data, iter_s=t_iter, **losses)
        if not self.write:
            return
        self.bar.update(1)
        s = self.smooth
        if it % 5 == 0 or it == self.iters:
            self.bar.set_postfix_str(
                f"loss {s.mean('loss'):.3f} mask {s.mean('loss_mask'):.3f} "
                f"amodal {s.mean('loss_amodal_mask'):.3f} occ {s.mean('loss_occlusion'):.3f} lr {lr:.2g}")
        if it % self.log_every == 0 or it == self.iters:
            append_jsonl(self.path, {"iteration": it, "lr": lr, **s.means(), "raw_loss": total,
                                     "elapsed_s": now - self.t_start})

    def seconds_per_iter(self) -> float:
        """The mean of the last 50 iterations' durations (NaN before the first)."""
        return (sum(self.iter_times) / len(self.iter_times)) if self.iter_times else float("nan")

    def close(self) -> None:
        self.bar.close()


# =========================================================================== curves
def plot_curves(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """``training_curves.png`` from ``losses.jsonl`` and ``metrics.jsonl`` in ``out_dir``: smoothed losses
    (log scale) and validation AP vs iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    path = Path(path) if path is not None else out_dir / "training_curves.png"
    losses = read_jsonl(out_dir / "losses.jsonl")
    metrics = read_jsonl(out_dir / "metrics.jsonl")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.8))
    if losses:
        its = [r["iteration"] for r in losses]
        for k in ("loss", *LOSS_KEYS):
            ys = [r.get(k) for r in losses]
            if any(y is not None and y > 0 for y in ys):
                ax0.plot(its, [y if y is not None and y > 0 else float("nan") for y in ys],
                         label=k.replace("loss_", "") if k != "loss" else "total", lw=2.0 if k == "loss" else 1.0)
        ax0.set_yscale("log")
        ax0.legend(fontsize=8, ncol=2)
    ax0.set_xlabel("iteration")
    ax0.set_title("training losses (smoothed)")
    ax0.grid(alpha=0.3)
    if metrics:
        its = [r["iteration"] for r in metrics]
        for k, label in (("mask_ap", "visible AP"), ("mask_ap50", "visible AP50"), ("mask_ap75", "visible AP75"),
                         ("amodal_ap", "amodal AP"), ("amodal_ap50", "amodal AP50")):
            ax1.plot(its, [r.get(k) if r.get(k) is not None else float("nan") for r in metrics], "o-", label=label)
        ax1.set_ylim(0, 1)
        ax1.legend(fontsize=8)
    ax1.set_xlabel("iteration")
    ax1.set_title("held-out COCO mask AP")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
