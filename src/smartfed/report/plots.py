"""Matplotlib figures of runs: loss curves, EEQA quotas, expert usage, partition sizes.

Each function takes already-read run data (see :func:`smartfed.bench.layout.read_run`) and
writes one PNG; none of them needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from smartfed.bench.layout import loss_curve


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# A bench has about a dozen entries: more than one colour cycle, and some curves coincide, so
# every line also gets its own marker and dash pattern.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
_DASHES = ("-", "--", "-.", ":")


def _line_style(index: int) -> dict[str, Any]:
    return {
        "color": plt.get_cmap("tab20")(index % 20),
        "marker": _MARKERS[index % len(_MARKERS)],
        "linestyle": _DASHES[(index // 4) % len(_DASHES)],
        "markersize": 4,
    }


LOSS_LABELS = {
    "eval_loss": "eval loss (answer tokens)",
    "target_loss": "target-set loss (answer tokens)",
}


def loss_vs_round(
    runs: dict[str, dict[str, Any]], path: Path, title: str, metric: str = "eval_loss"
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, (label, run) in enumerate(runs.items()):
        curve = loss_curve(run, metric)
        if not curve:
            continue
        x, y = zip(*curve, strict=True)
        style = _line_style(index)
        if len(curve) == 1:  # no rounds (static merging): a level line
            ax.axhline(y[0], color=style["color"], linestyle=":", linewidth=1.2,
                       label=f"{label} (no training)")  # fmt: skip
        else:
            ax.plot(x, y, label=label, **style)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(LOSS_LABELS[metric])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def loss_vs_bytes(
    runs: dict[str, dict[str, Any]], path: Path, title: str, metric: str = "eval_loss"
) -> Path:
    """A loss against cumulative traffic (up + down); log x, so round 0 is left out."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, (label, run) in enumerate(runs.items()):
        total, points = 0, []
        for row in run["rows"]:
            total += row["bytes_up"] + row["bytes_down"]
            if metric in row:
                points.append((total / 2**20, row[metric]))
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, label=label, **_line_style(index))
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication, MiB (up + down, log scale)")
    ax.set_ylabel(LOSS_LABELS[metric])
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def quota_heatmap(run: dict[str, Any], matrices: list[str] | None, path: Path, title: str) -> Path:
    rows = [r for r in run["rows"] if r.get("quotas")]
    quotas = np.array([r["quotas"] for r in rows]).T  # (P, rounds)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.09 * quotas.shape[0] + 1.5)))
    image = ax.imshow(quotas, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("round")
    ax.set_xticks(range(len(rows)), [str(r["round"]) for r in rows])
    ax.set_ylabel("adapted matrix")
    if matrices and len(matrices) == quotas.shape[0]:
        step = max(1, len(matrices) // 20)
        ticks = list(range(0, len(matrices), step))
        ax.set_yticks(ticks, [_short(matrices[i]) for i in ticks], fontsize=6)
    fig.colorbar(image, ax=ax, label="experts per token K_ℓ")
    ax.set_title(title)
    return _save(fig, path)


def expert_usage(usage: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Per matrix, the share of gate mass that goes to each pool module (stacked bars)."""
    matrices = list(usage)
    modules = sorted({m for shares in usage.values() for m in shares})
    shares = np.array([[usage[mat].get(mod, 0.0) for mod in modules] for mat in matrices])
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.12 * len(matrices) + 1.5)))
    left = np.zeros(len(matrices))
    for index, module in enumerate(modules):
        ax.barh(range(len(matrices)), shares[:, index], left=left, label=module)
        left += shares[:, index]
    ax.set_yticks(range(len(matrices)), [_short(m) for m in matrices], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of gate mass on each pool module's experts")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def partition_sizes(partitions: dict[str, Any], path: Path, title: str) -> Path:
    clients = partitions["clients"]
    sizes = [c["size"] for c in clients]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(sizes)), sizes, color="tab:gray")
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training examples")
    ax.set_xticks(range(len(sizes)))
    ax.set_title(f"{title} ({partitions.get('scheme', '?')} partition)")
    return _save(fig, path)


def _short(matrix: str) -> str:
    """model.layers.12.self_attn.q_proj -> L12.q_proj"""
    parts = matrix.split(".")
    if "layers" in parts:
        index = parts.index("layers")
        if index + 1 < len(parts):
            return f"L{parts[index + 1]}.{parts[-1]}"
    return matrix
