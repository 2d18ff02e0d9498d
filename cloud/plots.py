"""Figures of a run: per-class I-AUROC over rounds and the cumulative updates per class.

matplotlib is imported when a figure is drawn, with the Agg backend, so the cloud
needs no display and pays nothing for plotting until the run ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_rounds"]

logger = logging.getLogger(__name__)


def plot_rounds(summaries: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Draw I-AUROC per class and the mean over rounds (left), and B_c over rounds (right).

    `summaries` are the per-round records of `rounds.jsonl`. Rounds without
    evaluation leave gaps in the left panel. Returns the PNG path, or None when
    there is nothing to draw.
    """
    if not summaries:
        return None

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rounds = [summary["round"] for summary in summaries]
    classes = sorted({name for summary in summaries for name in summary.get("cumulative_updates", {})})
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)

    for class_name in classes:
        values = [summary.get("metrics", {}).get(class_name, {}).get("i_auroc", float("nan")) for summary in summaries]
        left.plot(rounds, values, marker=".", linewidth=1, alpha=0.7, label=class_name)
        updates = [summary["cumulative_updates"].get(class_name, 0) for summary in summaries]
        right.plot(rounds, updates, marker=".", linewidth=1, label=class_name)
    mean = [summary.get("metrics_mean", {}).get("i_auroc", float("nan")) for summary in summaries]
    left.plot(rounds, mean, color="black", linewidth=2.5, label="mean")

    from matplotlib.ticker import MaxNLocator

    left.set(title="I-AUROC per class", xlabel="round", ylabel="I-AUROC", ylim=(0.0, 1.02))
    right.set(title="cumulative updates B_c", xlabel="round", ylabel="updates")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.legend(*left.get_legend_handles_labels(), loc="outside right center", fontsize="small")

    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    logger.info("round curves written to %s", path)
    return path
