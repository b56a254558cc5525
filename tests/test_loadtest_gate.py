from loadtests.loadtest import Row, slo_gate


def row(name: str, requests: int, failures: int, p99: float) -> Row:
    return Row("POST", name, requests, failures, p99 / 2, p99, 10.0)


def test_slo_gate_passes_within_thresholds() -> None:
    rows = [row("rest a", 100, 0, 300), row("Aggregated", 100, 0, 300)]
    assert slo_gate(rows, max_p99_ms=500, max_failure_ratio=0.01) == []


def test_slo_gate_names_each_violation() -> None:
    rows = [
        row("rest slow", 50, 0, 900),
        row("grpc fast", 50, 2, 100),
        row("Aggregated", 100, 2, 900),
    ]
    problems = slo_gate(rows, max_p99_ms=500, max_failure_ratio=0.01)
    assert any("failure ratio 0.0200" in p for p in problems)
    assert any(p.startswith("rest slow: p99 900") for p in problems)
    assert not any("grpc fast" in p for p in problems)


def test_slo_gate_fails_an_empty_run() -> None:
    assert slo_gate([row("Aggregated", 0, 0, 0)], 500, 0.01) == ["no requests were made"]


def test_a_host_that_cannot_be_reached_is_not_load_tested(tmp_path, capsys) -> None:
    from loadtests.loadtest import main
    from loadtests.server import free_port

    host = f"http://127.0.0.1:{free_port()}"
    assert main(["--host", host, "--time", "1", "--out", str(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"not run: {host}: connection_failed") and "locust" not in said
    assert not (tmp_path / "locust_stats.csv").exists()
