"""Counting and logging of rejected inbound messages.

A service does not crash on a bad message. It counts the message by kind and logs
the reason: the first `LOG_FIRST_N` rejections of a kind one by one, then every
hundredth. Operators can so see how much was dropped and why.
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
