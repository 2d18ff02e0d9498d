"""Service settings: one pydantic model per service, loaded from YAML with environment overrides.

Precedence, highest first: environment variables, the YAML file, the defaults
below. Environment variables use the prefix `MODIAD_` and `__` between nested
levels, e.g. `MODIAD_MQTT__URL=mqtt://10.0.0.5:1883` or `MODIAD_ROUNDS=20`.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from modiad.errors import ConfigError
from modiad.features.embedded import EmbeddedFeatureSettings
from modiad.features.paper import PaperFeatureSettings
from modiad.protocol import IDENTIFIER_PATTERN
from modiad.transport.mqtt import MqttSettings

__all__ = [
    "CloudSettings",
    "EdgeSettings",
    "SchedulingSettings",
    "SensorSettings",
    "TrainingSettings",
    "load_settings",
]

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

_command_line_overrides: ContextVar[dict[str, Any]] = ContextVar("command_line_overrides", default={})
"""Options given on the command line while `load_settings` builds a model; they beat the environment."""


class _ServiceSettings(BaseSettings):
    """Fields every service shares."""

    model_config = SettingsConfigDict(
        env_prefix="MODIAD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    transport: Literal["mqtt", "inprocess"] = Field(
        "mqtt", description="Message transport: 'mqtt' (a broker) or 'inprocess' (experiments and tests)."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection, used when transport is 'mqtt'.")
    topic_root: str = Field("modiad/v1", description="Root of every topic; change it to run two fleets on one broker.")
    state_dir: Path = Field(Path("./modiad-state"), description="Folder for persistent state (buffers, model bank, caches).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging threshold.")
    seed: int = Field(0, ge=0, description="Seed of every random choice (model init, minibatches, RS).")
    features: EmbeddedFeatureSettings = Field(
        default_factory=EmbeddedFeatureSettings, description="Embedded feature preset (EfficientNet-Lite0 + FPFH)."
    )
    features_preset: Literal["embedded", "paper"] = Field(
        "embedded",
        description="Feature preset: 'embedded' (no downloads, settings in features) or 'paper' (DINO + Point-MAE, settings in paper_features).",
    )
    paper_features: PaperFeatureSettings = Field(
        default_factory=PaperFeatureSettings, description="Paper feature preset (DINO ViT-B/8 + Point-MAE) and its weight files."
    )
    torch_threads: int = Field(1, ge=1, le=256, description="CPU threads torch may use in this service.")
    feature_cache_bytes: int = Field(
        4 * 1024**3,
        ge=1024**2,
        description="Size limit of the feature cache in state_dir/feature-cache, in bytes (default 4 GiB).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs, so the environment must come first to override it.
        command_line = InitSettingsSource(settings_cls, init_kwargs=_command_line_overrides.get())
        return command_line, env_settings, init_settings


class TrainingSettings(BaseModel):
    """Local update settings that the cloud sends with every assignment."""

    model_config = {"extra": "forbid"}

    iterations: int = Field(100, ge=1, le=100_000, description="τ: Adam iterations per class update.")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    batch_pixels: int = Field(1024, ge=1, le=1_000_000, description="Foreground pixels per minibatch.")


class SchedulingSettings(BaseModel):
    """Policy and budgets of the per-round class-update schedule."""

    model_config = {"extra": "forbid"}

    policy: Literal["smg", "rs", "so", "bo"] = Field(
        "smg", description="smg: sequential marginal gain; rs: random; so: sufficient only; bo: balanced only."
    )
    comm_budget: int = Field(5, ge=0, description="Γ^com: class updates per round over all edges.")
    alpha: float = Field(0.5, ge=0, description="Weight of data sufficiency R̄ in the priority.")
    beta: float = Field(0.5, ge=0, description="Weight of class balance V̄ in the priority.")
    epsilon: float = Field(1e-6, gt=0, description="ε in V_c = log(1 + 1/(π_c + ε)); keeps V finite.")


class CloudSettings(_ServiceSettings):
    """The round coordinator."""

    rounds: int = Field(10, ge=1, le=100_000, description="Rounds to run; a restarted cloud continues where it stopped.")
    expected_edges: list[str] = Field(
        default_factory=list, description="Edge ids to wait for before round 1 (empty: start as soon as any edge is online)."
    )
    join_timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for expected edges before starting anyway.")
    status_deadline_s: float = Field(300.0, gt=0, description="Seconds to collect status reports in a round.")
    update_deadline_s: float = Field(600.0, gt=0, description="Seconds to collect updates in a round.")
    scheduling: SchedulingSettings = Field(default_factory=SchedulingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    data_root: Path | None = Field(None, description="Dataset root (MVTec 3D-AD layout) for evaluation; None: no evaluation.")
    classes: list[str] = Field(
        default_factory=list, description="Classes to evaluate (empty: every class in data_root)."
    )
    eval_split: Literal["test", "validation"] = Field("test", description="Split evaluated after each round.")
    eval_every: int = Field(1, ge=1, description="Evaluate every this many rounds; the last round is always evaluated.")
    results_dir: Path | None = Field(None, description="Where to write results.json, CSV and the round log; None: state_dir/results.")
    max_payload_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Largest inbound message accepted, in bytes (default 128 MiB)."
    )

    @field_validator("expected_edges")
    @classmethod
    def _check_edge_ids(cls, edge_ids: list[str]) -> list[str]:
        for edge_id in edge_ids:
            if not IDENTIFIER_PATTERN.match(edge_id):
                raise ValueError(f"edge id {edge_id!r} must be 1-64 characters of letters, digits, '_', '-', '.'")
        return edge_ids


class EdgeSettings(_ServiceSettings):
    """An edge gateway."""

    edge_id: str = Field("edge-1", description="Unique id of this edge; used in topics and file names.")
    capacity: int = Field(2, ge=0, le=10_000, description="Γ_k^cop: class updates this edge can run per round.")
    classes: list[str] = Field(
        default_factory=list,
        description="Class names this edge accepts samples of (empty: any); a sample of another class is rejected.",
    )
    wait_for_packet: bool = Field(
        True, description="Report status only after the round's packet arrived (lock-step replay); false for live sensors."
    )
    packet_wait_s: float = Field(120.0, gt=0, description="Seconds to wait for the round's packet before reporting anyway.")
    max_payload_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Largest inbound message accepted, in bytes (default 128 MiB)."
    )

    @field_validator("edge_id")
    @classmethod
    def _check_edge_id(cls, edge_id: str) -> str:
        if not IDENTIFIER_PATTERN.match(edge_id):
            raise ValueError(f"edge id {edge_id!r} must be 1-64 characters of letters, digits, '_', '-', '.'")
        return edge_id


class SensorSettings(_ServiceSettings):
    """The sensor simulator replaying a dataset as the online stream."""

    data_root: Path = Field(Path("./modiad-data/synthetic"), description="Dataset root in the MVTec 3D-AD layout.")
    edges: list[str] = Field(
        default_factory=lambda: [f"edge-{index}" for index in range(1, 6)], description="Edge ids to stream to."
    )
    classes: list[str] = Field(default_factory=list, description="Classes to stream (empty: every class in data_root).")
    classes_per_edge: int = Field(4, ge=1, description="Number of classes on each edge.")
    edges_per_class: int = Field(2, ge=1, description="Edges that hold each class; its samples are split evenly between them.")
    packet_size: int = Field(10, ge=1, le=10_000, description="P: most samples per edge per round.")
    dirichlet_alpha: float = Field(1.0, gt=0, description="Concentration of the per-packet class mix.")
    rounds: int = Field(10, ge=1, le=100_000, description="Rounds to stream (packets are precomputed for these).")


def load_settings(settings_class: type[SettingsT], path: Path | str | None = None, **overrides: Any) -> SettingsT:
    """Build settings from an optional YAML file, then environment variables, then `overrides`.

    `overrides` (command-line options) win over everything. Raises ConfigError with
    the field, the value and the reason for the first invalid field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    command_line = {key: value for key, value in overrides.items() if value is not None}

    token = _command_line_overrides.set(command_line)
    try:
        return settings_class(**data)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(settings_class, error, path)) from error
    except SettingsError as error:
        # pydantic-settings raises this for a MODIAD_* variable it cannot parse (nested values are JSON).
        raise ConfigError(
            f"invalid environment variable for {settings_class.__name__}: {error}; nested fields and lists take "
            'JSON, e.g. MODIAD_EXPECTED_EDGES=\'["edge-1","edge-2"]\''
        ) from error
    finally:
        _command_line_overrides.reset(token)


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config path {path} is a folder; pass a YAML file such as config/cloud.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file (examples are in config/)")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error}); save it as UTF-8 YAML") from error
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0] if str(error) else "syntax error"
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {first_line}") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field names, got {type(content).__name__}")
    return content


def _describe_validation_error(settings_class: type[BaseModel], error: ValidationError, path: Path | str | None) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "<root>"
    source = f" (settings from {path}, MODIAD_* environment variables and options)" if path else ""
    value = first.get("input")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"unknown field; the known fields are {sorted(settings_class.model_fields)}"
    extra = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"invalid {settings_class.__name__} field {field!r}{source}: value {value!r:.100} — {message}{extra}"
