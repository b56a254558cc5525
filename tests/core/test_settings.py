"""Settings from the environment: every constraint refuses a bad value at load; per-model
settings (ModelSettings) resolve with a documented precedence."""

from __future__ import annotations

import json
import os
from typing import Literal, get_origin

import pytest
from pydantic import ValidationError

from service.core.model_settings import ModelSettings, PerModelFields, VersionPolicy
from service.core.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DEEPSERVE_"):
            monkeypatch.delenv(name)


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for field, value in env.items():
        monkeypatch.setenv(f"DEEPSERVE_{field.upper()}", value)
    return Settings()


def refused(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        load(monkeypatch, **{field: value})
    assert [error["loc"][0] for error in caught.value.errors()] == [field]
    return caught.value


BAD_VALUES: list[tuple[str, str]] = [
    ("host", ""),
    ("port", "0"),
    ("port", "65536"),
    ("grpc_port", "0"),
    ("grpc_port", "70000"),
    ("grpc_max_concurrent_rpcs", "0"),
    ("grpc_max_health_rpcs", "-1"),
    ("grpc_max_streams", "-1"),
    ("grpc_max_inference_streams", "-1"),
    ("grpc_request_timeout_s", "0"),
    ("grpc_max_connection_idle_s", "-1"),
    ("grpc_max_connection_age_s", "-0.5"),
    ("grpc_max_connection_age_grace_s", "nan"),
    ("models", "[]"),
    ("models", '[""]'),
    ("version_policy", "latest:0"),
    ("versions", '{"m": "latest:x"}'),
    ("placement", "elsewhere"),
    ("placements", '{"m": "elsewhere"}'),
    ("model_settings", '{"m": {"max_batch_size": 0}}'),
    ("device", "tpu"),
    ("batching", "maybe"),
    ("length_buckets", "maybe"),
    ("max_batch_size", "0"),
    ("gpu_max_batch_size", "0"),
    ("max_latency_ms", "-1"),
    ("max_latency_ms", "inf"),
    ("remote_max_latency_ms", "0"),
    ("workers_per_model", "0"),
    ("preprocess_threads", "0"),
    ("gateway_workers", "-1"),
    ("intra_op_threads", "-1"),
    ("solo_intra_op_threads", "-1"),
    ("jpeg_draft_factor", "-0.5"),
    ("jpeg_draft_factor", "inf"),
    ("max_queue", "0"),
    ("max_body_bytes", "0"),
    ("http_idle_timeout_s", "0"),
    ("http_header_timeout_s", "-1"),
    ("http_body_timeout_s", "inf"),
    ("max_image_pixels", "0"),
    ("max_audio_seconds", "0"),
    ("max_segment_seconds", "inf"),
    ("max_segments", "0"),
    ("segment_window", "0"),
    ("stream_idle_timeout_s", "0"),
    ("stream_max_seconds", "-1"),
    ("max_text_chars", "0"),
    ("max_batch_items", "0"),
    ("max_json_bytes", "0"),
    ("max_json_elements", "0"),
    ("max_bytes_elements", "0"),
    ("max_beam", "0"),
    ("max_explain_grid", "1"),
    ("max_explain_png_px", "15"),
    ("max_queue_wait_ms", "-1"),
    ("auth_failure_limit", "-1"),
    ("auth_failure_window_s", "0"),
    ("auth_failure_max_clients", "0"),
    ("shutdown_grace_s", "-1"),
    ("runner_lost_liveness_s", "0"),
    ("runner_lost_liveness_s", "nan"),
    ("poll_interval_s", "0"),
    ("load_timeout_s", "0"),
    ("unload_drain_s", "-1"),
    ("max_upload_bytes", "0"),
    ("model_control", "sometimes"),
    ("caption_decoding", "tokens"),
    ("io_binding", "sometimes"),
]
CHECKED_BY_VALIDATOR = {"version_policy", "versions"}


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_a_bad_environment_value_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    refused(monkeypatch, field, value)


def test_every_numeric_field_is_constrained_and_every_constraint_tested() -> None:
    constrained = set(CHECKED_BY_VALIDATOR)
    for name, info in Settings.model_fields.items():
        if info.annotation in (int, float):
            assert info.metadata, f"{name}: no constraint (ge/gt/...)"
        if info.metadata or get_origin(info.annotation) is Literal:
            constrained.add(name)
    assert constrained <= {field for field, _ in BAD_VALUES}


def test_limits_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        port="65535",
        grpc_port="1",
        max_batch_size="1",
        workers_per_model="1",
        max_latency_ms="0",
        max_queue_wait_ms="0",
        intra_op_threads="0",
        shutdown_grace_s="0",
    )
    assert (settings.port, settings.grpc_port, settings.max_batch_size) == (65535, 1, 1)
    assert settings.for_model("m").max_queue_wait_ms == 0


def test_defaults_are_unchanged(monkeypatch) -> None:
    from service.core import settings as settings_module

    monkeypatch.setattr(settings_module, "usable_cores", lambda: 2)
    defaults = Settings(gateway_workers=1).model_defaults()
    assert defaults == ModelSettings()
    assert defaults.model_dump() == {
        "batching": True,
        "length_buckets": True,
        "max_batch_size": 16,
        "gpu_max_batch_size": 64,
        "max_latency_ms": 5.0,
        "remote_max_latency_ms": 1000.0,
        "workers_per_model": 2,
        "intra_op_threads": 1,
        "solo_intra_op_threads": 0,
        "adapt_batch_size": True,
        "max_queue": 512,
        "max_queue_wait_ms": 1000.0,
        "placement": "local",
        "device": "auto",
        "io_binding": "auto",
        "max_image_pixels": 40_000_000,
        "jpeg_draft_factor": 2.0,
        "max_audio_seconds": 600.0,
        "max_segment_seconds": 5.0,
        "max_segments": 512,
        "segment_window": 16,
        "max_text_chars": 5000,
        "max_batch_items": 64,
        "max_beam": 8,
        "max_explain_grid": 16,
        "caption_decoding": "batch",
        "version_policy": {"latest": 1, "all": False, "pinned": ()},
    }


@pytest.mark.parametrize(
    ("written", "policy"),
    [
        ("latest", VersionPolicy(latest=1)),
        (" latest:3 ", VersionPolicy(latest=3)),
        ("all", VersionPolicy(all=True)),
        ("v1-20261122, v2", VersionPolicy(pinned=("v1-20261122", "v2"))),
        (["v1-a", "v2-b"], VersionPolicy(pinned=("v1-a", "v2-b"))),
    ],
)
def test_version_policies_parse(written: str | list[str], policy: VersionPolicy) -> None:
    assert VersionPolicy.parse(written) == policy
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "written", ["", " , ", "latest:0", "latest:-1", "latest:x", "latest2", "Latest", [], ["V1"]]
)
def test_bad_version_policies_are_refused(written: str | list[str]) -> None:
    with pytest.raises(ValueError, match="expected"):
        VersionPolicy.parse(written)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("version_policy", "latest:0", ["DEEPSERVE_VERSION_POLICY", "'latest:0'"]),
        ("versions", '{"digits-cnn": ["v1", "Bad Pin"]}', ["DEEPSERVE_VERSIONS", "'Bad Pin'"]),
    ],
)
def test_a_bad_version_policy_names_its_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, named: list[str]
) -> None:
    message = str(refused(monkeypatch, field, value))
    assert all(part in message for part in named), message
    assert 'expected "latest", "latest:N"' in message


def test_old_per_model_variables_work_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"digits-cnn": "latest:2", "my-model": ["v1-20261122", "v2-20261123"]}
    settings = load(
        monkeypatch, placements='{"imagenet-cnn": "remote"}', versions=json.dumps(versions)
    )
    assert settings.placements == {"imagenet-cnn": "remote"}
    assert settings.versions == versions  # passed on unchanged to the store's version selection
    assert settings.placement_of("imagenet-cnn") == "remote"
    assert settings.placement_of("digits-cnn") == "local"
    assert settings.for_model("digits-cnn").version_policy == VersionPolicy(latest=2)
    pinned = VersionPolicy(pinned=("v1-20261122", "v2-20261123"))
    assert settings.for_model("my-model").version_policy == pinned
    assert settings.for_model("other").version_policy == VersionPolicy(latest=1)


def test_model_settings_override_the_globals_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load(
        monkeypatch,
        max_batch_size="8",
        workers_per_model="3",
        version_policy="all",
        model_settings='{"imagenet-cnn": {"max_batch_size": 32, "placement": "remote"}}',
    )
    tuned = settings.for_model("imagenet-cnn")
    assert (tuned.max_batch_size, tuned.placement) == (32, "remote")
    assert tuned.workers_per_model == 3  # unset in the entry: the global value
    assert tuned.version_policy == VersionPolicy(all=True)
    assert settings.model_settings == {
        "imagenet-cnn": {"max_batch_size": 32, "placement": "remote"}
    }
    other = settings.for_model("digits-cnn")
    assert (other.max_batch_size, other.placement) == (8, "local")
    assert settings.placement_of("imagenet-cnn") == "remote"


def test_specific_variables_win_over_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        placement="remote",
        placements='{"a": "local"}',
        versions='{"a": "latest:2"}',
        model_settings='{"a": {"placement": "remote", "version_policy": "all", "max_beam": 2}}',
    )
    model = settings.for_model("a")
    assert (model.placement, model.version_policy, model.max_beam) == (
        "local",
        VersionPolicy(latest=2),
        2,
    )
    assert settings.for_model("b").placement == "remote"


def test_unknown_per_model_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(monkeypatch, "model_settings", '{"a": {"max_batch_sise": 8}}')
    assert error.errors()[0]["loc"] == ("model_settings", "a")
    assert "unknown per-model setting(s) 'max_batch_sise'" in str(error)
    assert "max_batch_size" in str(error)  # the known keys are listed


@pytest.mark.parametrize(
    "entry",
    [
        {"max_batch_size": None},
        {"workers_per_model": 0},
        {"max_latency_ms": "inf"},
        {"placement": "elsewhere"},
        {"version_policy": "latest:0"},
        {"version_policy": {"latest": 2, "all": True}},
        {"batching": "maybe"},
    ],
)
def test_model_settings_entries_have_the_global_constraints(
    monkeypatch: pytest.MonkeyPatch, entry: dict[str, object]
) -> None:
    error = refused(monkeypatch, "model_settings", json.dumps({"a": entry}))
    assert error.errors()[0]["loc"][:3] == ("model_settings", "a", next(iter(entry)))


def test_batch_size_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        max_batch_size="4",
        gpu_max_batch_size="48",
        model_settings='{"solo": {"batching": false}, "big": {"gpu_max_batch_size": 128}}',
    )
    assert settings.model_defaults().batch_size_for("CPUExecutionProvider") == 4
    assert settings.model_defaults().batch_size_for("CUDAExecutionProvider") == 48
    assert settings.for_model("solo").batch_size_for("CUDAExecutionProvider") == 1
    assert settings.for_model("big").batch_size_for("CUDAExecutionProvider") == 128
    assert settings.for_model("big").batch_size_for("CPUExecutionProvider") == 4
    unbatched = load(monkeypatch, batching="false").model_defaults()
    assert unbatched.batch_size_for("CPUExecutionProvider") == 1


@pytest.mark.parametrize(
    ("env", "remote"),
    [
        ({}, False),
        ({"placement": "remote"}, True),
        ({"placements": '{"a": "remote"}'}, True),
        ({"model_settings": '{"a": {"placement": "remote"}}'}, True),
        (
            {"model_settings": '{"a": {"placement": "remote"}}', "placements": '{"a": "local"}'},
            False,
        ),
        ({"model_settings": '{"a": {"max_beam": 2}}'}, False),
    ],
)
def test_may_place_remote_sees_every_source(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], remote: bool
) -> None:
    assert load(monkeypatch, **env).may_place_remote() is remote


def test_model_settings_are_immutable_and_cached() -> None:
    settings = Settings()
    model = settings.for_model("a")
    assert settings.for_model("a") is model
    with pytest.raises(ValidationError):
        model.max_batch_size = 2  # type: ignore[misc]


def test_layers_apply_in_order_and_are_validated() -> None:
    base = ModelSettings()
    layered = base.layered({"max_beam": 2, "placement": "remote"}, {"max_beam": 3})
    assert (layered.max_beam, layered.placement, base.max_beam) == (3, "remote", 8)
    with pytest.raises(ValidationError, match="unknown per-model setting"):
        base.layered({"beam": 3})
    with pytest.raises(ValidationError):
        base.layered({"max_beam": 0})


def test_every_per_model_field_is_a_global_default() -> None:
    assert set(PerModelFields.model_fields) <= set(Settings.model_fields)
    assert set(ModelSettings.model_fields) - set(PerModelFields.model_fields) == {"version_policy"}


def test_gateway_workers_follow_the_cores_the_placement_and_the_model_control(
    monkeypatch,
) -> None:
    from service.core import settings as settings_module

    monkeypatch.setattr(settings_module, "usable_cores", lambda: 16)
    assert Settings(gateway_workers=0).gateway_workers_in_force() == 4  # local: every model
    assert Settings(gateway_workers=0, placement="remote").gateway_workers_in_force() == 1
    mixed = Settings(gateway_workers=0, placements={"digits-cnn": "remote"})
    assert mixed.gateway_workers_in_force() == 1
    in_file = Settings(gateway_workers=0, model_settings={"m": {"placement": "remote"}})
    assert in_file.gateway_workers_in_force() == 1
    assert Settings(gateway_workers=0, model_control="explicit").gateway_workers_in_force() == 1
    assert Settings(gateway_workers=0, device="gpu").gateway_workers_in_force() == 1
    assert Settings(gateway_workers=3).gateway_workers_in_force() == 3
    monkeypatch.setattr(settings_module, "usable_cores", lambda: 2)
    assert Settings(gateway_workers=0).gateway_workers_in_force() == 2
    assert Settings(gateway_workers=0).solo_threads_for(Settings().model_defaults()) == 2


def test_explicit_model_control_refuses_several_gateway_workers() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_WORKERS=2 with DEEPSERVE_MODEL_CONTROL"):
        Settings(gateway_workers=2, model_control="explicit")
    with pytest.raises(ValidationError, match="GATEWAY_WORKERS=3 with a remote placement"):
        Settings(gateway_workers=3, placements={"digits-cnn": "remote"})
    assert Settings(gateway_workers=1, model_control="explicit").gateway_workers_in_force() == 1


def test_batch_runs_per_model_share_the_cores_among_the_gateway_workers(monkeypatch) -> None:
    from service.core import settings as settings_module

    monkeypatch.setattr(settings_module, "usable_cores", lambda: 2)
    assert Settings(gateway_workers=1).model_defaults().workers_per_model == 2
    assert Settings(gateway_workers=2).model_defaults().workers_per_model == 1
    assert Settings(gateway_workers=4).model_defaults().workers_per_model == 1
    monkeypatch.setattr(settings_module, "usable_cores", lambda: 16)
    assert Settings(gateway_workers=0).model_defaults().workers_per_model == 4
    chosen = Settings(gateway_workers=2, workers_per_model=3)  # set: kept as it is
    assert chosen.model_defaults().workers_per_model == 3
