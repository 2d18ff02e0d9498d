"""Service settings: YAML, environment overrides, command-line overrides and clear errors."""

import pytest

from modiad.errors import ConfigError
from modiad.settings import CloudSettings, EdgeSettings, SensorSettings, load_settings


def test_defaults_match_the_method():
    settings = CloudSettings()
    assert settings.scheduling.policy == "smg"
    assert settings.scheduling.comm_budget == 5
    assert settings.scheduling.alpha == 0.5
    assert settings.scheduling.beta == 0.5
    assert EdgeSettings().capacity == 2
    assert SensorSettings().packet_size == 10


def test_yaml_values_are_loaded(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("rounds: 7\nscheduling:\n  policy: bo\n  comm_budget: 3\n")
    settings = load_settings(CloudSettings, path)
    assert settings.rounds == 7
    assert settings.scheduling.policy == "bo"
    assert settings.scheduling.comm_budget == 3


def test_environment_overrides_yaml(tmp_path, monkeypatch):
    path = tmp_path / "cloud.yaml"
    path.write_text("rounds: 7\nscheduling:\n  policy: bo\n")
    monkeypatch.setenv("MODIAD_ROUNDS", "9")
    monkeypatch.setenv("MODIAD_MQTT__URL", "mqtt://127.0.0.1:2883")
    settings = load_settings(CloudSettings, path)
    assert settings.rounds == 9
    assert settings.mqtt.url == "mqtt://127.0.0.1:2883"
    assert settings.scheduling.policy == "bo"


def test_command_line_overrides_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MODIAD_EDGE_ID", "edge-7")
    settings = load_settings(EdgeSettings, None, edge_id="edge-3")
    assert settings.edge_id == "edge-3"


def test_invalid_value_names_field_and_value(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("scheduling:\n  comm_budget: -4\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(CloudSettings, path)
    message = str(raised.value)
    assert "scheduling.comm_budget" in message
    assert "-4" in message
    assert str(path) in message


def test_unknown_field_lists_known_fields(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("capacitty: 3\n")
    with pytest.raises(ConfigError, match="unknown field.*capacity"):
        load_settings(EdgeSettings, path)


def test_invalid_environment_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MODIAD_ROUNDS", "many")
    with pytest.raises(ConfigError, match="rounds"):
        load_settings(CloudSettings)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(CloudSettings, tmp_path / "absent.yaml")


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("- rounds\n- 3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(CloudSettings, path)


def test_edge_id_with_topic_wildcard_is_rejected():
    with pytest.raises(ConfigError, match="edge_id"):
        load_settings(EdgeSettings, None, edge_id="edge/+")


def test_example_configs_are_valid():
    from pathlib import Path

    config_dir = Path(__file__).resolve().parents[1] / "config"
    assert load_settings(CloudSettings, config_dir / "cloud.yaml").rounds == 50
    assert load_settings(EdgeSettings, config_dir / "edge.yaml").edge_id == "edge-1"
    assert load_settings(SensorSettings, config_dir / "sensors.yaml").packet_size == 10


def test_bad_json_in_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MODIAD_EXPECTED_EDGES", "edge-1")
    with pytest.raises(ConfigError, match="JSON"):
        load_settings(CloudSettings)


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_bytes(b"\xff\xfe\x00rounds: 3")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings(CloudSettings, path)


def test_config_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_settings(CloudSettings, tmp_path)


def test_client_ids_differ_between_fleets():
    from modiad.protocol import Topics

    assert Topics("fleet-a/v1").client_id("cloud") != Topics("fleet-b/v1").client_id("cloud")
    assert Topics("fleet-a/v1").client_id("cloud") == Topics("fleet-a/v1").client_id("cloud")
