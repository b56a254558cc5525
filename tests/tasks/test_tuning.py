"""`deepserve models tune`: a real search on a real (tiny) model within its budget, recorded for
this device class, and read back by the settings chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from service.core.device import device_class
from service.core.settings import Settings
from service.store.specs import TUNED_FILE, ModelSpec
from service.tasks import tuning
from service.tasks.registry import import_model
from tests.runtime.test_solo_runs import matmul_graph


@pytest.fixture
def spec(scratch_store, tmp_path: Path) -> ModelSpec:
    return import_model(matmul_graph(tmp_path / "matmul.onnx", size=64), "tiny-matmul")


def test_a_search_records_the_fastest_configuration_within_the_objective(spec, tmp_path) -> None:
    shown: list[str] = []
    config = Settings(gateway_workers=1, device="cpu").for_model(spec.name, spec.settings)
    entry = asyncio.run(tuning.search(spec, config, 1000.0, 12.0, 4, shown.append))
    assert entry["device_class"] == device_class(False)
    trials = entry["measured"]["trials"]
    assert len(trials) >= 5 and all(t["requests"] > 0 and t["rps"] > 0 for t in trials)
    assert len({json.dumps(t["settings"], sort_keys=True) for t in trials}) >= 5  # a search
    if entry["settings"]:  # tuned: a tried configuration, within the objective
        assert set(entry["settings"]) == set(tuning.TUNED_KEYS)
        assert any(t["settings"] == entry["settings"] for t in trials)
    else:  # the defaults won: nothing is frozen
        assert entry["measured"]["rps"] == entry["measured"]["default_rps"]
    assert all(t["p99_ms"] > 0 for t in trials)
    assert any("chosen" in line for line in shown)

    path = tuning.record(spec, entry, None)
    assert path == spec.path / TUNED_FILE
    reloaded = ModelSpec.from_dir(spec.path)
    assert reloaded.tuned[device_class(False)]["settings"] == entry["settings"]
    served = Settings(gateway_workers=1, device="cpu").for_model(
        spec.name, reloaded.settings, reloaded.tuned
    )
    for key, value in entry["settings"].items():
        assert getattr(served, key) == value


def test_a_damaged_tuned_file_is_ignored_and_never_hides_the_version(spec) -> None:
    from service.store.specs import list_specs

    (spec.path / TUNED_FILE).write_text('{"cpu: x": {"settings": {"max_batch_size": 0')
    problems: dict[str, str] = {}
    assert [s.tag for s in list_specs(problems)] == [spec.tag] and not problems
    assert ModelSpec.from_dir(spec.path).tuned == {}
    entry = {"device_class": device_class(False), "settings": {}}
    with pytest.raises(ValueError, match="not JSON"):  # not overwritten blindly either
        tuning.record(spec, entry, None)


def test_only_tunable_settings_and_only_the_local_placement(tmp_path: Path) -> None:
    here = device_class(False)
    tuned = {here: {"settings": {"max_batch_size": 7}}}
    remote = Settings(gateway_workers=1, device="cpu", placement="remote")
    assert remote.for_model("m", None, tuned).max_batch_size == 16
    out = tmp_path / "tuned.json"
    out.write_text(json.dumps({"m": {here: {"settings": {"device": "gpu"}}}}))
    with pytest.raises(ValueError, match="device cannot be tuned"):
        Settings(gateway_workers=1, device="cpu", tuned_file=out)
    other_count = {here: {"settings": {"max_batch_size": 7}, "gateway_workers": 4}}
    assert (
        Settings(gateway_workers=1, device="cpu").for_model("m", None, other_count).max_batch_size
        == 16
    )


def test_no_configuration_within_an_impossible_objective_is_refused(spec) -> None:
    config = Settings(gateway_workers=1, device="cpu").for_model(spec.name, spec.settings)
    with pytest.raises(tuning.TuningFailed, match="no configuration met p99"):
        asyncio.run(tuning.search(spec, config, 1e-6, 4.0, 2, lambda line: None))


def test_tuned_entries_apply_only_on_their_device_class_and_below_every_other_source(
    tmp_path: Path,
) -> None:
    here = device_class(False)
    tuned = {
        here: {"settings": {"max_batch_size": 7, "max_latency_ms": 1.0}},
        "cpu: some other machine x 64": {"settings": {"max_batch_size": 99}},
    }
    settings = Settings(gateway_workers=1, device="cpu")
    assert settings.for_model("m", None, tuned).max_batch_size == 7
    own = {"max_batch_size": 3}
    assert settings.for_model("m", own, tuned).max_batch_size == 3  # its own file wins
    assert settings.for_model("m", own, tuned).max_latency_ms == 1.0
    env = Settings(gateway_workers=1, device="cpu", model_settings={"m": {"max_latency_ms": 4.0}})
    assert env.for_model("m", None, tuned).max_latency_ms == 4.0
    other = {"cpu: some other machine x 64": tuned["cpu: some other machine x 64"]}
    assert settings.for_model("m", None, other).max_batch_size == 16  # the defaults
    off = Settings(gateway_workers=1, device="cpu", use_tuned=False)
    assert off.for_model("m", None, tuned).max_batch_size == 16

    out = tmp_path / "tuned.json"
    out.write_text(json.dumps({"m": {here: {"settings": {"max_batch_size": 5}}}}))
    pointed = Settings(gateway_workers=1, device="cpu", tuned_file=out)
    assert pointed.for_model("m", None, tuned).max_batch_size == 5  # the file wins


def test_a_tuned_file_with_a_bad_entry_stops_the_server_at_start_naming_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tuned.json"
    here = device_class(False)
    out.write_text(json.dumps({"m": {here: {"settings": {"max_batch_size": 0}}}}))
    with pytest.raises(ValueError, match="model 'm'"):
        Settings(gateway_workers=1, device="cpu", tuned_file=out)
    with pytest.raises(ValueError, match="unreadable"):
        Settings(gateway_workers=1, device="cpu", tuned_file=tmp_path / "missing.json")


def test_with_several_gateway_workers_no_shape_oversubscribes_a_workers_share(
    monkeypatch,
) -> None:
    from service.tasks import tuning

    monkeypatch.setattr(tuning, "usable_cores", lambda: 4)
    alone = [(c["workers_per_model"], c["intra_op_threads"]) for c in tuning.candidates(False)[0]]
    shared = [
        (c["workers_per_model"], c["intra_op_threads"]) for c in tuning.candidates(False, 2)[0]
    ]
    assert max(w * t for w, t in alone) == 8  # one worker: twice the cores, measured as served
    assert max(w * t for w, t in shared) == 2 and (1, 2) in shared and (2, 1) in shared


def trial(rps: float, p99_ms: float = 10.0) -> tuning.Trial:
    return tuning.Trial({}, rps, p99_ms / 2, p99_ms, int(rps))


@pytest.mark.parametrize(
    ("winner", "defaults", "kept"),
    [
        ([120, 118, 121, 119], [100, 101, 99, 100], True),  # faster every round, far over noise
        ([130, 110, 120, 125], [100, 100, 100, 100], True),  # 10-30 % faster every round
        ([102, 101, 103, 102], [100, 100, 100, 100], False),  # faster every round, but under 5 %
        ([130, 96, 131, 130], [100, 100, 100, 100], False),  # slower in one round
        ([160, 101, 102, 101], [100, 100, 100, 100], False),  # one lucky round: within the noise
        ([], [100], False),  # the defaults were the best tried
    ],
)
def test_a_winner_is_kept_only_when_clearly_faster_in_every_round(winner, defaults, kept) -> None:
    verdict = tuning.clear_gain(
        [trial(r) for r in winner], [trial(r) for r in defaults][: len(winner) or 1], 500.0
    )
    assert (verdict is None) is kept
    if not kept:
        assert "the defaults" not in verdict and verdict  # says why, for the chosen: line


def test_a_winner_whose_p99_misses_the_objective_when_measured_again_is_not_kept() -> None:
    verdict = tuning.clear_gain([trial(200, 600.0)] * 4, [trial(100)] * 4, 500.0)
    assert verdict is not None and "500" in verdict
