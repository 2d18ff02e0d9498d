"""Tests for the online stream: class partition, source split and packet schedule."""

from __future__ import annotations

from collections import Counter

import pytest

from modiad.errors import ConfigError
from sensors_sim.stream import build_schedule, partition_classes, split_sources

CLASSES = [f"class{i}" for i in range(10)]
EDGES = [f"edge{i}" for i in range(5)]


def _sources(samples_per_class: int = 40, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: [f"{name}/train/good/{i:03d}" for i in range(samples_per_class)] for name in CLASSES}
    return split_sources(ids, partition, seed=seed)


def _delivered(schedule) -> list[tuple[str, str, str]]:
    return [
        (edge_id, class_name, sample_id)
        for packets in schedule
        for edge_id, packet in packets.items()
        for class_name, sample_id in packet
    ]


# ---------------------------------------------------------------------------------
# partition_classes


def test_partition_ten_classes_five_edges():
    partition = partition_classes(CLASSES, EDGES, classes_per_edge=4, edges_per_class=2)

    assert sorted(partition) == sorted(EDGES)
    for edge_id, classes in partition.items():
        assert len(classes) == 4, edge_id
        assert len(set(classes)) == 4, edge_id
    edges_per_class = Counter(name for classes in partition.values() for name in classes)
    assert set(edges_per_class) == set(CLASSES)
    assert set(edges_per_class.values()) == {2}


@pytest.mark.parametrize(
    ("class_count", "edge_count", "per_edge", "per_class"),
    [(6, 4, 3, 2), (10, 10, 1, 1), (4, 2, 4, 2), (9, 3, 6, 2), (7, 7, 3, 3)],
)
def test_partition_balanced_for_other_layouts(class_count, edge_count, per_edge, per_class):
    classes = [f"c{i}" for i in range(class_count)]
    edges = [f"e{i}" for i in range(edge_count)]

    partition = partition_classes(classes, edges, classes_per_edge=per_edge, edges_per_class=per_class)

    for edge_id, edge_classes in partition.items():
        assert len(edge_classes) == per_edge, edge_id
        assert len(set(edge_classes)) == per_edge, edge_id
    counts = Counter(name for edge_classes in partition.values() for name in edge_classes)
    assert counts == Counter({name: per_class for name in classes})


def test_partition_unbalanced_counts_rejected():
    with pytest.raises(ConfigError) as caught:
        partition_classes(CLASSES, EDGES[:4], classes_per_edge=4, edges_per_class=2)

    message = str(caught.value)
    assert "20" in message
    assert "16" in message


def test_partition_rejects_more_per_edge_than_classes():
    with pytest.raises(ConfigError, match="classes_per_edge=4"):
        partition_classes(["a", "b"], ["e0"], classes_per_edge=4, edges_per_class=2)


@pytest.mark.parametrize(
    ("classes", "edges"),
    [(["a", "a", "b", "c"], ["e0", "e1"]), (["a", "b", "c", "d"], ["e0", "e0"]), ([], ["e0"])],
)
def test_partition_rejects_repeated_or_empty_names(classes, edges):
    with pytest.raises(ConfigError):
        partition_classes(classes, edges, classes_per_edge=4, edges_per_class=2)


# ---------------------------------------------------------------------------------
# split_sources


def test_split_sources_even_and_disjoint():
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: [f"{name}/{i}" for i in range(41 + index)] for index, name in enumerate(CLASSES)}

    sources = split_sources(ids, partition, seed=3)

    for name in CLASSES:
        shares = [sources[edge_id][name] for edge_id in sources if name in sources[edge_id]]
        assert len(shares) == 2, name
        sizes = [len(share) for share in shares]
        assert max(sizes) - min(sizes) <= 1, name
        combined = shares[0] + shares[1]
        assert len(combined) == len(set(combined)), name
        assert sorted(combined) == sorted(ids[name]), name


def test_split_sources_keeps_partition_classes():
    partition = partition_classes(CLASSES, EDGES)

    sources = _sources()

    for edge_id, classes in partition.items():
        assert list(sources[edge_id]) == classes


def test_split_sources_deterministic_and_seeded():
    first = _sources(seed=5)
    second = _sources(seed=5)
    other = _sources(seed=6)

    assert first == second
    assert first != other


def test_split_sources_ignores_dict_order():
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: [f"{name}/{i}" for i in range(20)] for name in CLASSES}
    reversed_ids = dict(reversed(list(ids.items())))
    reversed_partition = dict(reversed(list(partition.items())))

    assert split_sources(ids, partition, seed=1) == split_sources(reversed_ids, reversed_partition, seed=1)


def test_split_sources_rejects_unplaced_class():
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: ["x"] for name in CLASSES} | {"extra": ["y"]}

    with pytest.raises(ConfigError, match="extra"):
        split_sources(ids, partition, seed=0)


def test_split_sources_rejects_class_without_samples():
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: ["x"] for name in CLASSES[1:]}

    with pytest.raises(ConfigError, match="class0"):
        split_sources(ids, partition, seed=0)


def test_split_sources_rejects_repeated_sample_id():
    partition = partition_classes(CLASSES, EDGES)
    ids = {name: [f"{name}/0", f"{name}/1"] for name in CLASSES}
    ids["class3"] = ["dup", "dup"]

    with pytest.raises(ConfigError, match="dup"):
        split_sources(ids, partition, seed=0)


# ---------------------------------------------------------------------------------
# build_schedule


def test_schedule_packets_full_until_sources_run_out():
    sources = _sources()
    schedule = build_schedule(sources, rounds=12, packet_size=10, seed=0)

    left = {edge_id: sum(len(ids) for ids in classes.values()) for edge_id, classes in sources.items()}
    for round_index, packets in enumerate(schedule):
        for edge_id, packet in packets.items():
            assert len(packet) == min(10, left[edge_id]), (round_index, edge_id)
            left[edge_id] -= len(packet)


def test_schedule_no_repeats_and_all_delivered():
    sources = _sources(samples_per_class=33)

    schedule = build_schedule(sources, rounds=30, packet_size=7, seed=2)

    delivered = _delivered(schedule)
    expected = {(e, c, s) for e, classes in sources.items() for c, ids in classes.items() for s in ids}
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == expected


def test_schedule_takes_samples_in_source_order():
    sources = _sources()

    schedule = build_schedule(sources, rounds=20, seed=4)

    for edge_id, classes in sources.items():
        for class_name, ids in classes.items():
            received = [s for e, c, s in _delivered(schedule) if e == edge_id and c == class_name]
            assert received == ids[: len(received)], (edge_id, class_name)


def test_schedule_stops_early_without_dropping():
    sources = _sources()

    schedule = build_schedule(sources, rounds=3, packet_size=10, seed=0)

    assert len(schedule) == 3
    assert len(_delivered(schedule)) == 3 * 10 * len(EDGES)


def test_schedule_deterministic_and_seeded():
    sources = _sources()

    first = build_schedule(sources, rounds=10, seed=9)
    second = build_schedule(sources, rounds=10, seed=9)
    other = build_schedule(sources, rounds=10, seed=10)

    assert first == second
    assert first != other


def test_schedule_ignores_dict_order():
    sources = _sources()
    reordered = {
        edge_id: dict(reversed(list(sources[edge_id].items()))) for edge_id in reversed(list(sources))
    }

    assert build_schedule(sources, rounds=10, seed=1) == build_schedule(reordered, rounds=10, seed=1)


def test_schedule_only_draws_classes_with_samples():
    # One class runs out after a sample, so later packets must fill up from the others.
    sources = {"edge0": {"scarce": ["s0"], "plenty": [f"p{i}" for i in range(30)], "empty": []}}

    schedule = build_schedule(sources, rounds=4, packet_size=10, seed=0)

    sizes = [len(packets["edge0"]) for packets in schedule]
    assert sizes == [10, 10, 10, 1]
    classes = Counter(class_name for packets in schedule for class_name, _ in packets["edge0"])
    assert classes == Counter({"plenty": 30, "scarce": 1})


def test_schedule_edge_without_classes_gets_empty_packets():
    sources = {"busy": {"a": ["a0", "a1"]}, "idle": {}}

    schedule = build_schedule(sources, rounds=2, packet_size=5, seed=0)

    assert [packets["idle"] for packets in schedule] == [[], []]
    assert [len(packets["busy"]) for packets in schedule] == [2, 0]


def test_schedule_class_mix_follows_alpha():
    sources = {"edge0": {name: [f"{name}/{i}" for i in range(1000)] for name in ("a", "b", "c", "d")}}

    def mean_largest_share(alpha: float) -> float:
        schedule = build_schedule(sources, rounds=60, packet_size=20, dirichlet_alpha=alpha, seed=0)
        shares = []
        for packets in schedule:
            counts = Counter(class_name for class_name, _ in packets["edge0"])
            shares.append(max(counts.values()) / 20)
        return sum(shares) / len(shares)

    concentrated = mean_largest_share(0.05)
    spread = mean_largest_share(100.0)
    assert concentrated > 0.8
    assert spread < 0.45


def test_schedule_class_mix_varies_between_rounds():
    sources = _sources()

    schedule = build_schedule(sources, rounds=5, seed=0)

    mixes = {tuple(sorted(Counter(c for c, _ in packets["edge0"]).items())) for packets in schedule}
    assert len(mixes) > 1


@pytest.mark.parametrize(
    "options",
    [{"rounds": -1}, {"rounds": 2, "packet_size": 0}, {"rounds": 2, "dirichlet_alpha": 0.0}],
)
def test_schedule_rejects_invalid_options(options):
    with pytest.raises(ConfigError):
        build_schedule(_sources(), **options)
