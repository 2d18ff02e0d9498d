"""Result files of a run: the per-round log, results.json and the per-class CSV table."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["METRIC_KEYS", "RoundReporter"]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("i_auroc", "p_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01")


class RoundReporter:
    """Writes `rounds.jsonl` (one line per round, flushed as it happens) and the final results."""

    def __init__(self, results_dir: Path, run_info: dict[str, Any] | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.run_info = run_info or {}
        self.rounds_path = self.results_dir / "rounds.jsonl"

    def record_round(self, summary: dict[str, Any]) -> None:
        """Append one round's summary and fsync it, so a crash keeps every finished round."""
        with self.rounds_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_results(self, per_class: dict[str, dict[str, float]], mean: dict[str, float]) -> Path:
        """Write results.json (per-class metrics and their mean under "mean") and results.csv."""
        document = {"run": self.run_info, "classes": per_class, "mean": mean}
        path = self.results_dir / "results.json"
        _write_text_atomically(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
        _write_text_atomically(self.results_dir / "results.csv", _table_csv(per_class, mean))
        self._plot()
        logger.info("results written to %s", self.results_dir)
        return path

    def _plot(self) -> None:
        """Draw curves.png from the round log.

        Runs after results.json and results.csv are written, and any plotting
        failure is logged, not raised, so a figure problem cannot stop the cloud.
        """
        try:
            from cloud.plots import plot_rounds

            summaries = [json.loads(line) for line in self.rounds_path.read_text(encoding="utf-8").splitlines()]
            plot_rounds(summaries, self.results_dir / "curves.png")
        except Exception as error:  # matplotlib raises many kinds; the results are already safe
            logger.warning("curves.png not written: %s", error)


def _table_csv(per_class: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", *METRIC_KEYS])
    for class_name, metrics in sorted(per_class.items()):
        writer.writerow([class_name, *(f"{metrics.get(key, float('nan')):.4f}" for key in METRIC_KEYS)])
    if mean:
        writer.writerow(["mean", *(f"{mean.get(key, float('nan')):.4f}" for key in METRIC_KEYS)])
    return buffer.getvalue()


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
