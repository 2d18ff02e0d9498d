"""The online stream: which classes each edge has, and which samples arrive when.

Training samples reach the edges in packets, one per edge per round. Classes are spread
over the edges in a structured non-IID layout: every edge has the same number of
classes and every class sits on the same number of edges, with its training samples
split evenly between them. Each round an edge receives at most `packet_size` samples
whose class mix is a Dirichlet draw over the edge's classes that still have samples.
Buffers are accumulative, so a sample is delivered once and never discarded.

Every function is deterministic for its seed and sorts dict keys before drawing, so
the result never depends on dict iteration order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from modiad.errors import ConfigError

__all__ = ["build_schedule", "partition_classes", "split_sources"]

logger = logging.getLogger(__name__)

Packet = list[tuple[str, str]]
"""One edge's samples of one round as (class_name, sample_id) pairs."""


def partition_classes(
    classes: Sequence[str],
    edge_ids: Sequence[str],
    *,
    classes_per_edge: int = 4,
    edges_per_class: int = 2,
) -> dict[str, list[str]]:
    """Assign `classes_per_edge` classes to every edge so that each class is on exactly
    `edges_per_class` edges.

    The layout is cyclic: the class list, in the given order, is repeated
    `edges_per_class` times and cut into consecutive blocks of `classes_per_edge`, one
    block per edge in the given edge order. With 10 classes and 5 edges, edge 0 gets
    classes 0-3, edge 1 gets 4-7, edge 2 gets 8, 9, 0, 1 and so on. Raises ConfigError
    when the counts do not balance (len(classes) * edges_per_class must equal
    len(edge_ids) * classes_per_edge), when a block would hold a class twice, or when
    a name is repeated.
    """
    _require_non_empty(classes, "class")
    _require_non_empty(edge_ids, "edge id")
    _require_distinct(classes, "class")
    _require_distinct(edge_ids, "edge id")
    if classes_per_edge < 1 or edges_per_class < 1:
        raise ConfigError(
            f"classes_per_edge and edges_per_class must be at least 1, "
            f"got {classes_per_edge} and {edges_per_class}."
        )
    if len(classes) * edges_per_class != len(edge_ids) * classes_per_edge:
        raise ConfigError(
            f"Cannot place {len(classes)} classes on {edges_per_class} edges each using "
            f"{len(edge_ids)} edges with {classes_per_edge} classes each: "
            f"{len(classes)} × {edges_per_class} = {len(classes) * edges_per_class} class slots "
            f"are needed but {len(edge_ids)} × {classes_per_edge} = "
            f"{len(edge_ids) * classes_per_edge} are available. Change the number of edges, "
            "classes_per_edge or edges_per_class so that both products are equal."
        )
    if classes_per_edge > len(classes):
        raise ConfigError(
            f"classes_per_edge={classes_per_edge} exceeds the {len(classes)} classes, "
            "so an edge would hold a class twice."
        )

    partition = {}
    for edge_position, edge_id in enumerate(edge_ids):
        first_slot = edge_position * classes_per_edge
        slots = range(first_slot, first_slot + classes_per_edge)
        partition[edge_id] = [classes[slot % len(classes)] for slot in slots]
    return partition


def split_sources(
    train_ids_by_class: Mapping[str, Sequence[str]],
    partition: Mapping[str, Sequence[str]],
    *,
    seed: int,
) -> dict[str, dict[str, list[str]]]:
    """Split each class's training sample ids evenly between the edges that hold it.

    Each class's ids are shuffled with a generator seeded from `seed` and cut into one
    contiguous share per edge, in sorted edge order, so share sizes differ by at most
    one. The shuffled order of a share is the order in which the edge later receives
    its samples. Returns {edge_id: {class_name: [sample_id, ...]}} with the classes in
    the partition's order. Raises ConfigError when the partition names a class with no
    sample list, a class with samples is on no edge, or a class lists an id twice.
    """
    placed = {class_name for classes in partition.values() for class_name in classes}
    missing = sorted(placed - set(train_ids_by_class))
    if missing:
        raise ConfigError(
            f"The partition places classes {missing} on edges but no training samples are "
            "listed for them. List their sample ids or remove them from the partition."
        )
    unplaced = sorted(set(train_ids_by_class) - placed)
    if unplaced:
        raise ConfigError(
            f"Classes {unplaced} have training samples but are on no edge, so their "
            "samples would never be delivered. Add them to the partition."
        )

    rng = np.random.default_rng(seed)
    shares: dict[str, dict[str, list[str]]] = {edge_id: {} for edge_id in sorted(partition)}
    for class_name in sorted(train_ids_by_class):
        sample_ids = list(train_ids_by_class[class_name])
        _require_distinct(sample_ids, f"sample id of class {class_name!r}")
        shuffled = [sample_ids[i] for i in rng.permutation(len(sample_ids))]
        edges = sorted(edge_id for edge_id, classes in partition.items() if class_name in classes)
        for edge_id, share in zip(edges, np.array_split(np.arange(len(shuffled)), len(edges))):
            shares[edge_id][class_name] = [shuffled[i] for i in share]

    # Present each edge's classes in the partition's order, which is the caller's order.
    return {
        edge_id: {class_name: shares[edge_id][class_name] for class_name in partition[edge_id]}
        for edge_id in sorted(partition)
    }


def build_schedule(
    sources: Mapping[str, Mapping[str, Sequence[str]]],
    *,
    rounds: int,
    packet_size: int = 10,
    dirichlet_alpha: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Packet]]:
    """Return the packets of every round: schedule[r][edge_id] is round r's packet.

    An edge's packet contains min(packet_size, samples it has left) samples. The class
    proportions are a Dirichlet(alpha) draw over the edge's classes that still have
    samples, turned into counts by largest remainder. A count above what a class has
    left is capped, and the excess fills the other classes in order of decreasing
    proportion. Each class's samples are taken in source order. No sample is repeated
    or dropped: a sample is missing from the schedule only if `rounds` ends before its
    edge's sources run out, and an edge with nothing left gets an empty packet. Rounds
    are 0-based in the list. Raises ConfigError for a negative round count, a packet
    size below 1 or a non-positive alpha.
    """
    if rounds < 0:
        raise ConfigError(f"rounds must be non-negative, got {rounds}.")
    if packet_size < 1:
        raise ConfigError(f"packet_size must be at least 1, got {packet_size}.")
    if not dirichlet_alpha > 0:
        raise ConfigError(f"dirichlet_alpha must be positive, got {dirichlet_alpha}.")

    rng = np.random.default_rng(seed)
    edge_ids = sorted(sources)
    queues = {
        edge_id: {class_name: list(sources[edge_id][class_name]) for class_name in sorted(sources[edge_id])}
        for edge_id in edge_ids
    }
    positions = {edge_id: dict.fromkeys(queues[edge_id], 0) for edge_id in edge_ids}

    schedule: list[dict[str, Packet]] = []
    for _ in range(rounds):
        packets = {}
        for edge_id in edge_ids:
            packets[edge_id] = _next_packet(
                queues[edge_id], positions[edge_id], packet_size, dirichlet_alpha, rng
            )
        schedule.append(packets)

    undelivered = sum(
        len(queue) - positions[edge_id][class_name]
        for edge_id in edge_ids
        for class_name, queue in queues[edge_id].items()
    )
    if undelivered:
        logger.info("Stream schedule of %d rounds leaves %d samples undelivered", rounds, undelivered)
    return schedule


def _next_packet(
    queues: dict[str, list[str]],
    positions: dict[str, int],
    packet_size: int,
    alpha: float,
    rng: np.random.Generator,
) -> Packet:
    """Draw one edge's packet from its per-class queues and advance `positions`, the
    index of each queue's next undelivered sample."""
    left = {class_name: len(queue) - positions[class_name] for class_name, queue in queues.items()}
    active = [class_name for class_name in queues if left[class_name] > 0]
    if not active:
        return []

    size = min(packet_size, sum(left[class_name] for class_name in active))
    proportions = rng.dirichlet([alpha] * len(active))
    capacity = np.array([left[class_name] for class_name in active])
    counts = _allocate(proportions, size, capacity)

    packet: Packet = []
    for class_name, count in zip(active, counts):
        start = positions[class_name]
        stop = start + int(count)
        packet.extend((class_name, sample_id) for sample_id in queues[class_name][start:stop])
        positions[class_name] = stop
    return packet


def _allocate(proportions: np.ndarray, total: int, capacity: np.ndarray) -> np.ndarray:
    """Turn proportions into integer counts summing to `total`, none above `capacity`.

    Counts start as the largest-remainder rounding of proportions × total. Counts above
    capacity are capped, and the freed units fill the other classes up to their capacity
    in order of decreasing proportion (ties by position). `total` must not exceed
    capacity.sum().
    """
    ideal = proportions * total
    counts = np.floor(ideal).astype(int)
    shortfall = total - counts.sum()
    by_remainder = np.argsort(-(ideal - counts), kind="stable")
    counts[by_remainder[:shortfall]] += 1

    excess = int(np.maximum(counts - capacity, 0).sum())
    counts = np.minimum(counts, capacity)
    for position in np.argsort(-proportions, kind="stable"):
        extra = min(excess, int(capacity[position] - counts[position]))
        counts[position] += extra
        excess -= extra
    return counts


def _require_distinct(names: Sequence[str], role: str) -> None:
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in names:
        if name in seen:
            repeated.add(name)
        seen.add(name)
    if repeated:
        raise ConfigError(f"Each {role} must be listed once, but {sorted(repeated)} appear more than once.")


def _require_non_empty(names: Sequence[str], role: str) -> None:
    if not names:
        raise ConfigError(f"No {role} given: at least one is required.")
