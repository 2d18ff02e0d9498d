"""The project's exception hierarchy.

Every error that reaches a user derives from `ModiadError`, so entry points can
print one clear line instead of a traceback. Messages state what failed, on which
value, and what to do next.
"""

__all__ = [
    "ModiadError",
    "ConfigError",
    "DatasetError",
    "ProtocolError",
    "TransportError",
    "WeightsError",
]


class ModiadError(Exception):
    """Root of all MODIAD errors."""


class ConfigError(ModiadError):
    """A configuration file, field or command-line option is invalid."""


class DatasetError(ModiadError):
    """A dataset tree, sample file or class name is missing or invalid."""


class ProtocolError(ModiadError):
    """An inbound message failed validation (schema, size, dtype, shape, finiteness)."""


class TransportError(ModiadError):
    """The message transport (MQTT broker connection) failed."""


class WeightsError(ModiadError):
    """Pretrained weights are missing or do not match the expected architecture."""
