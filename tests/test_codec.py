"""Wire codec and protocol headers: round trips and every rejection path."""

import json

import numpy as np
import pytest

from modiad.codec import TensorSpec, check_tensors, decode, encode
from modiad.errors import ProtocolError
from modiad.protocol import SampleHeader, StatusHeader, Topics, UpdateHeader, sample_tensor_specs

LIMIT = 1 << 20


def _sample_header(**changes):
    fields = dict(edge_id="edge-1", round=3, sample_id="disc/train/good/001", class_name="disc", height=8, width=8)
    fields.update(changes)
    return SampleHeader(**fields)


def _frame(header_json: bytes, body: bytes = b"") -> bytes:
    return len(header_json).to_bytes(4, "big") + header_json + body


def test_round_trip_keeps_header_and_tensors():
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    xyz = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
    header = _sample_header()

    decoded, tensors = decode(encode(header, {"rgb": rgb, "xyz": xyz}), SampleHeader, max_payload_bytes=LIMIT)

    assert decoded == header
    assert np.array_equal(tensors["rgb"], rgb)
    assert np.array_equal(tensors["xyz"], xyz)


def test_header_without_tensors_decodes_to_empty_dict():
    header = StatusHeader(edge_id="e", round=1, counts={"a": 2}, capacity=2, feature_identity="x")
    decoded, tensors = decode(encode(header), StatusHeader, max_payload_bytes=LIMIT)
    assert decoded.counts == {"a": 2}
    assert tensors == {}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00\x00\x10{}", "header length field"),
        (_frame(b"not json"), "not valid UTF-8 JSON"),
        (_frame(b"\xff\xfe"), "not valid UTF-8 JSON"),
        (_frame(b'{"kind": "sample"}'), "SampleHeader schema"),
        (_frame(json.dumps({"kind": "sample", "edge_id": "e"}).encode()), "SampleHeader schema"),
    ],
)
def test_malformed_frames_are_rejected(payload, message):
    with pytest.raises(ProtocolError, match=message):
        decode(payload, SampleHeader, max_payload_bytes=LIMIT)


def test_unknown_header_field_is_rejected():
    document = json.loads(_sample_header().model_dump_json())
    document["surprise"] = 1
    with pytest.raises(ProtocolError, match="surprise"):
        decode(_frame(json.dumps(document).encode()), SampleHeader, max_payload_bytes=LIMIT)


def test_oversized_payload_is_rejected_before_parsing():
    payload = encode(_sample_header(), {"rgb": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ProtocolError, match="above the limit"):
        decode(payload, SampleHeader, max_payload_bytes=len(payload) - 1)


def test_corrupt_tensor_blob_is_rejected():
    header_json = _sample_header().model_dump_json().encode()
    with pytest.raises(ProtocolError, match="not valid safetensors"):
        decode(_frame(header_json, b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!"), SampleHeader, max_payload_bytes=LIMIT)


def test_identifiers_with_topic_wildcards_are_rejected():
    with pytest.raises(ValueError):
        _sample_header(edge_id="edge/+")
    with pytest.raises(ValueError):
        _sample_header(class_name="#")


def test_check_tensors_accepts_matching_set():
    specs = sample_tensor_specs(4, 5)
    tensors = {"rgb": np.zeros((4, 5, 3), np.uint8), "xyz": np.full((4, 5, 3), np.nan, np.float32)}
    assert check_tensors(tensors, specs) is None  # raises ProtocolError on any mismatch


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"w": np.zeros((2, 3), np.float64)}, "dtype float64"),
        ({"w": np.zeros((3, 2), np.float32)}, "shape"),
        ({"w": np.zeros((2, 3, 1), np.float32)}, "shape"),
        ({"w": np.array([[0, 1, np.inf]] * 2, np.float32)}, "NaN or infinite"),
        ({"w": np.array([[0, 1, np.nan]] * 2, np.float32)}, "NaN or infinite"),
        ({}, "missing"),
        ({"w": np.zeros((2, 3), np.float32), "x": np.zeros(1, np.float32)}, "unexpected"),
    ],
)
def test_check_tensors_rejects(tensors, message):
    with pytest.raises(ProtocolError, match=message):
        check_tensors(tensors, {"w": TensorSpec("float32", (2, None))})


def test_update_header_rejects_negative_counts():
    with pytest.raises(ValueError):
        UpdateHeader(edge_id="e", round=1, class_name="c", base_version=0, num_samples=-1, num_pixels=0, final_loss=0.1)


def test_topics_are_versioned_and_reject_wildcard_roots():
    topics = Topics("modiad/v1")
    assert topics.update("edge-1", "disc") == "modiad/v1/edges/edge-1/update/disc"
    assert topics.round_current == "modiad/v1/rounds/current"
    with pytest.raises(ValueError):
        Topics("modiad/#")
