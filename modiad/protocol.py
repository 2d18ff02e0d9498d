"""MQTT topics and message headers of protocol version 1.

Every topic lives under a versioned root (default "modiad/v1"). Every header is a
pydantic model that forbids unknown fields; `message_id` lets receivers apply a
QoS 1 redelivery once. Tensors travel beside the header as safetensors (see
`modiad.codec`).

Flow of one round:
1. cloud → `rounds/current` (retained): round r opens, phase "status".
2. sensors → `sensors/{edge}/sample` for each sample of the round's packet, then
   `sensors/{edge}/packet` listing the packet's sample ids (lock-step replay only).
3. edge → `edges/{edge}/status`: samples held per class, capacity, model versions.
4. cloud → `edges/{edge}/assignment`: classes to update, with their global weights.
5. edge → `edges/{edge}/update/{class}`: the trained weights of one class.
6. cloud → `rounds/current`: phase "done" with the round's summary, then round r+1.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from modiad.codec import TensorSpec

__all__ = [
    "AssignmentHeader",
    "ClassAssignment",
    "OnlineHeader",
    "PacketHeader",
    "PROTOCOL_VERSION",
    "RoundHeader",
    "SampleHeader",
    "StatusHeader",
    "Topics",
    "UpdateHeader",
    "new_message_id",
    "sample_tensor_specs",
]

PROTOCOL_VERSION = 1

MAX_IMAGE_SIDE_PX = 4096
"""Largest accepted sample height or width; bounds memory per inbound sample."""

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
"""Edge ids and class names: safe in topic levels and file names."""

SampleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]{1,200}$")]
MessageId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def new_message_id() -> str:
    """Return a fresh random message id (32 hex digits)."""
    return uuid.uuid4().hex


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = PROTOCOL_VERSION
    message_id: MessageId = Field(default_factory=new_message_id)


class SampleHeader(_Header):
    """One multimodal sample; tensors "rgb" (uint8 H×W×3) and "xyz" (float32 H×W×3, metres)."""

    kind: Literal["sample"] = "sample"
    edge_id: Identifier
    round: int = Field(ge=0)
    sample_id: SampleId
    class_name: Identifier
    height: int = Field(ge=8, le=MAX_IMAGE_SIDE_PX)
    width: int = Field(ge=8, le=MAX_IMAGE_SIDE_PX)


class PacketHeader(_Header):
    """The list of samples a sensor sent to an edge for one round; no tensors."""

    kind: Literal["packet"] = "packet"
    edge_id: Identifier
    round: int = Field(ge=0)
    sample_ids: list[SampleId] = Field(max_length=10_000)


class OnlineHeader(_Header):
    """Edge liveness, retained; the broker publishes the "offline" will on a lost connection."""

    kind: Literal["online"] = "online"
    edge_id: Identifier
    state: Literal["online", "offline"]


class RoundHeader(_Header):
    """The cloud's current round and phase, retained.

    Phases: "status" (edges report), "train" (assignments sent), "done" (round
    aggregated and evaluated), "finished" (no more rounds).
    """

    kind: Literal["round"] = "round"
    round: int = Field(ge=0)
    phase: Literal["status", "train", "done", "finished"]
    total_rounds: int = Field(ge=0)
    deadline_unix_s: float | None = None


class StatusHeader(_Header):
    """An edge's status for one round: N_{k,c} per class, capacity Γ_k^cop, model versions held."""

    kind: Literal["status"] = "status"
    edge_id: Identifier
    round: int = Field(ge=0)
    counts: dict[Identifier, Annotated[int, Field(ge=0)]] = Field(max_length=10_000)
    capacity: int = Field(ge=0, le=10_000)
    feature_identity: str = Field(max_length=200)
    model_versions: dict[Identifier, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=10_000)


class ClassAssignment(BaseModel):
    """One class an edge must update this round, with the local training settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_name: Identifier
    mode: Literal["full"] = "full"
    model_version: int = Field(ge=0)
    iterations: int = Field(ge=1, le=100_000)
    learning_rate: float = Field(gt=0, le=1.0)
    batch_pixels: int = Field(ge=1, le=1_000_000)


class AssignmentHeader(_Header):
    """The classes an edge updates this round; tensors "{class}/{parameter}" hold the global weights.

    An edge that was scheduled nothing still gets an assignment with no classes, so
    it can tell that the round moved on.
    """

    kind: Literal["assignment"] = "assignment"
    edge_id: Identifier
    round: int = Field(ge=0)
    dim_2d: int = Field(ge=1, le=100_000)
    dim_3d: int = Field(ge=1, le=100_000)
    classes: list[ClassAssignment] = Field(max_length=10_000)


class UpdateHeader(_Header):
    """One class's local update; tensors are the mapper pair's parameters by name."""

    kind: Literal["update"] = "update"
    edge_id: Identifier
    round: int = Field(ge=0)
    class_name: Identifier
    mode: Literal["full"] = "full"
    base_version: int = Field(ge=0)
    num_samples: int = Field(ge=0)
    num_pixels: int = Field(ge=0)
    final_loss: float


def sample_tensor_specs(height: int, width: int) -> dict[str, TensorSpec]:
    """Return the tensors a sample message must carry for its declared size.

    xyz may hold NaN for missing points from real sensors, so finiteness is not
    required there; the edge maps non-finite points to "missing".
    """
    return {
        "rgb": TensorSpec("uint8", (height, width, 3)),
        "xyz": TensorSpec("float32", (height, width, 3), finite=False),
    }


class Topics:
    """Topic names under one root, e.g. "modiad/v1" in production or a unique root per test."""

    def __init__(self, root: str = "modiad/v1") -> None:
        if not root or "+" in root or "#" in root or root.endswith("/"):
            raise ValueError(f"invalid topic root {root!r}: use levels without wildcards or a trailing slash")
        self.root = root

    def client_id(self, role: str) -> str:
        """Return the MQTT client id of a service in this fleet, e.g. "modiad-cloud-1a2b3c4d".

        The suffix is a hash of the topic root, so two fleets on one broker never share
        a client id (the broker would disconnect one of them) or a persistent session.
        """
        digest = hashlib.sha256(self.root.encode("utf-8")).hexdigest()[:8]
        return f"modiad-{role}-{digest}"

    def sample(self, edge_id: str) -> str:
        return f"{self.root}/sensors/{edge_id}/sample"

    def packet(self, edge_id: str) -> str:
        return f"{self.root}/sensors/{edge_id}/packet"

    def online(self, edge_id: str) -> str:
        return f"{self.root}/edges/{edge_id}/online"

    def status(self, edge_id: str) -> str:
        return f"{self.root}/edges/{edge_id}/status"

    def assignment(self, edge_id: str) -> str:
        return f"{self.root}/edges/{edge_id}/assignment"

    def update(self, edge_id: str, class_name: str) -> str:
        return f"{self.root}/edges/{edge_id}/update/{class_name}"

    @property
    def round_current(self) -> str:
        return f"{self.root}/rounds/current"

    @property
    def all_online(self) -> str:
        return f"{self.root}/edges/+/online"

    @property
    def all_status(self) -> str:
        return f"{self.root}/edges/+/status"

    @property
    def all_updates(self) -> str:
        return f"{self.root}/edges/+/update/+"
