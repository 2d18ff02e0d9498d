"""Wire format of every MODIAD message: a JSON header plus optional safetensors bytes.

Layout: 4-byte big-endian header length N, N bytes of UTF-8 JSON, then the
safetensors blob (empty when the message carries no tensors). Nothing here
unpickles: JSON and safetensors are both plain data formats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from modiad.errors import ProtocolError

__all__ = [
    "MAX_HEADER_BYTES",
    "TensorSpec",
    "check_tensors",
    "decode",
    "encode",
]

MAX_HEADER_BYTES = 256 * 1024
"""Upper bound of a JSON header; larger headers are rejected before parsing."""

_LENGTH_BYTES = 4

HeaderT = TypeVar("HeaderT", bound=BaseModel)


def encode(header: BaseModel, tensors: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Serialise a header model and optional tensors into one payload."""
    header_bytes = header.model_dump_json().encode("utf-8")
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(header_bytes)} bytes, above the limit of {MAX_HEADER_BYTES}")
    body = save_tensors({name: np.ascontiguousarray(array) for name, array in tensors.items()}) if tensors else b""
    return len(header_bytes).to_bytes(_LENGTH_BYTES, "big") + header_bytes + body


def decode(
    payload: bytes, header_model: type[HeaderT], *, max_payload_bytes: int
) -> tuple[HeaderT, dict[str, np.ndarray]]:
    """Parse and validate a payload's header; return it with the raw tensors.

    Raises ProtocolError naming the fault for: an oversized payload, a truncated
    frame, an oversized or non-JSON header, a header that fails the schema, or a
    tensor blob that safetensors cannot parse. Tensor contents are checked by the
    caller with `check_tensors`, which takes the expected names and shapes.
    """
    if len(payload) > max_payload_bytes:
        raise ProtocolError(f"payload is {len(payload)} bytes, above the limit of {max_payload_bytes}")
    if len(payload) < _LENGTH_BYTES:
        raise ProtocolError(f"payload is {len(payload)} bytes, too short for a MODIAD frame")

    header_length = int.from_bytes(payload[:_LENGTH_BYTES], "big")
    if header_length > MAX_HEADER_BYTES or _LENGTH_BYTES + header_length > len(payload):
        raise ProtocolError(
            f"header length field is {header_length} but the payload has {len(payload) - _LENGTH_BYTES} bytes after it"
        )

    header_bytes = payload[_LENGTH_BYTES : _LENGTH_BYTES + header_length]
    try:
        header_data = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not valid UTF-8 JSON: {error}") from error
    try:
        header = header_model.model_validate(header_data)
    except ValidationError as error:
        raise ProtocolError(f"header failed the {header_model.__name__} schema: {_first_error(error)}") from error

    body = payload[_LENGTH_BYTES + header_length :]
    if not body:
        return header, {}
    try:
        tensors = load_tensors(bytes(body))
    except (SafetensorError, ValueError, OverflowError) as error:
        raise ProtocolError(f"tensor blob is not valid safetensors: {error}") from error
    return header, tensors


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "<root>"
    return f"{location}: {first['msg']} (got {first.get('input')!r:.80})"


class TensorSpec:
    """Expected dtype and shape of one tensor; None in `shape` accepts any size on that axis."""

    def __init__(self, dtype: str, shape: tuple[int | None, ...], *, finite: bool = True) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.finite = finite

    def describe(self) -> str:
        dims = "×".join("*" if size is None else str(size) for size in self.shape)
        return f"{self.dtype.name} {dims}"


def check_tensors(tensors: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> None:
    """Require exactly the tensors in `specs`, each with its dtype, shape and finite values."""
    missing = sorted(set(specs) - set(tensors))
    unexpected = sorted(set(tensors) - set(specs))
    if missing or unexpected:
        raise ProtocolError(f"tensor names differ from the expected set: missing {missing[:5]}, unexpected {unexpected[:5]}")

    for name, spec in specs.items():
        array = tensors[name]
        if array.dtype != spec.dtype:
            raise ProtocolError(f"tensor {name!r} has dtype {array.dtype.name}, expected {spec.describe()}")
        shape_ok = array.ndim == len(spec.shape) and all(
            expected is None or expected == actual for expected, actual in zip(spec.shape, array.shape)
        )
        if not shape_ok:
            raise ProtocolError(f"tensor {name!r} has shape {tuple(array.shape)}, expected {spec.describe()}")
        if spec.finite and np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise ProtocolError(f"tensor {name!r} contains NaN or infinite values")
