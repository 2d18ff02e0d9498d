"""Counting and logging of rejected inbound messages.

A service never crashes on a bad message: it logs the reason once per message
(repeats of one reason are logged at most `LOG_EVERY` times in a row, then every
hundredth) and counts it, so operators can see how much was dropped and why.
"""

from __future__ import annotations

import logging
from collections import Counter

__all__ = ["RejectionLog"]

LOG_FIRST_N = 20
"""Rejections of one kind logged individually before switching to every hundredth."""


class RejectionLog:
    """Counter of rejected inputs by kind, with rate-limited warnings."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.counts: Counter[str] = Counter()

    def reject(self, kind: str, source: str, reason: str) -> None:
        """Count one rejected input of `kind` from `source` (a topic or path) and log why."""
        self.counts[kind] += 1
        seen = self.counts[kind]
        if seen <= LOG_FIRST_N or seen % 100 == 0:
            self._logger.warning("rejected %s from %s (%d so far): %s", kind, source, seen, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
