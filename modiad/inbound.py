"""Decoding of inbound messages with rejection counting and duplicate suppression."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from modiad.codec import decode
from modiad.errors import ProtocolError
from modiad.rejections import RejectionLog

__all__ = ["InboundDecoder", "SEEN_MESSAGE_IDS_KEPT"]

logger = logging.getLogger(__name__)

SEEN_MESSAGE_IDS_KEPT = 100_000
"""Message ids remembered for QoS 1 duplicate suppression; the oldest are forgotten first.

At about 100 bytes each this bounds the memory to roughly 10 MB per service.
"""


class InboundDecoder:
    """Decodes payloads for one service; a bad one is counted and logged, a repeat is dropped."""

    def __init__(self, rejections: RejectionLog, max_payload_bytes: int) -> None:
        self.rejections = rejections
        self.max_payload_bytes = max_payload_bytes
        self.duplicates = 0
        self._seen_ids: dict[str, None] = {}

    def decode(self, topic: str, payload: bytes, header_model: type[BaseModel]) -> tuple[Any, dict] | None:
        """Return (header, tensors), or None for a rejected payload or an already seen message id."""
        try:
            header, tensors = decode(payload, header_model, max_payload_bytes=self.max_payload_bytes)
        except ProtocolError as error:
            self.rejections.reject(header_model.__name__, topic, str(error))
            return None

        message_id = header.message_id  # type: ignore[attr-defined]
        if message_id in self._seen_ids:
            self.duplicates += 1
            logger.debug("duplicate message %s on %s ignored", message_id, topic)
            return None
        self._seen_ids[message_id] = None
        if len(self._seen_ids) > SEEN_MESSAGE_IDS_KEPT:
            del self._seen_ids[next(iter(self._seen_ids))]
        return header, tensors
