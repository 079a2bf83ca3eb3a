"""The local clock: durations, the file every function reads, the CLI, and that only the
local platform sets it (never template.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kami_local import clock, runtime  # noqa: E402
from kami_local import template as tpl  # noqa: E402
from kami_local.__main__ import main  # noqa: E402


@pytest.fixture
def clock_file(tmp_path, monkeypatch) -> Path:
    file = tmp_path / "run" / "clock"
    monkeypatch.setenv(clock.ENV, str(file))
    return file


def test_durations_take_seconds_minutes_hours_and_days():
    assert clock.parse_duration("31d") == 31 * 86400
    assert clock.parse_duration("90s") == 90
    assert clock.parse_duration("15m") == 900
    assert clock.parse_duration("2h") == 7200
    assert clock.parse_duration("1d12h") == 86400 + 12 * 3600
    assert clock.parse_duration(" 2H ") == 7200
    for bad in ["", "31", "d", "1w", "-1d", "1.5h", "31 days"]:
        with pytest.raises(ValueError):
            clock.parse_duration(bad)


def test_advance_adds_up_and_reset_removes_the_file(clock_file):
    assert clock.offset() == 0
    assert clock.advance(60) == 60
    assert clock.advance(3600) == 3660
    assert clock_file.read_text() == "3660\n"
    assert [p.name for p in clock_file.parent.iterdir()] == ["clock"], "no temporary file left"
    with pytest.raises(ValueError):
        clock.advance(-1)
    clock.reset()
    assert not clock_file.exists() and clock.offset() == 0
    clock.reset()  # twice is fine


def test_cli(clock_file, capsys):
    assert main(["clock", "advance", "31d"]) == 0
    assert clock.offset() == 31 * 86400
    assert "offset +31d 0h 0m 0s" in capsys.readouterr().out
    assert main(["clock", "show"]) == 0
    assert main(["clock", "reset"]) == 0
    assert clock.offset() == 0
    with pytest.raises(SystemExit):
        main(["clock", "advance"])
    with pytest.raises(SystemExit):
        main(["clock", "advance", "soon"])


def test_every_function_the_platform_runs_gets_the_clock_file(clock_file, tmp_path):
    fn = runtime.Function("CheckoutFunction", tmp_path / "bootstrap", {"KAMI_TABLE": "t"}, 3, 128,
                          tmp_path / "logs", status=lambda line: None)
    try:
        assert fn.process_env()[clock.ENV] == str(clock_file)
        assert fn.process_env()[clock.SKEW_ENV] == str(clock_file.with_name("clock.skew.CheckoutFunction"))
    finally:
        fn.stop()


def test_a_skew_is_one_functions_own_and_reset_takes_every_skew_back(clock_file, capsys):
    assert clock.parse_duration("-10m", signed=True) == -600
    with pytest.raises(ValueError):
        clock.parse_duration("-10m")
    with pytest.raises(ValueError):
        clock.skew_path("../etc")
    assert main(["clock", "skew", "DeliveryWorkerFunction", "-10m"]) == 0
    assert main(["clock", "skew", "ExpirySweepFunction", "20m"]) == 0
    assert clock.skews() == {"DeliveryWorkerFunction": -600, "ExpirySweepFunction": 1200}
    assert clock.offset(clock.skew_path("DeliveryWorkerFunction")) == -600
    assert clock.offset() == 0, "the shared clock is untouched"
    assert "DeliveryWorkerFunction: skewed -600 s" in capsys.readouterr().out
    assert main(["clock", "skew", "ExpirySweepFunction", "0s"]) == 0
    assert clock.skews() == {"DeliveryWorkerFunction": -600}
    clock.advance(60)
    assert main(["clock", "reset"]) == 0
    assert clock.skews() == {} and clock.offset() == 0
    assert [p.name for p in clock_file.parent.iterdir()] == []
    with pytest.raises(SystemExit):
        main(["clock", "skew", "DeliveryWorkerFunction"])


def test_no_deployment_sets_the_clock_file():
    template = tpl.load(tpl.default_template())
    for name, fn in tpl.functions(template).items():
        env = (fn["Properties"].get("Environment") or {}).get("Variables") or {}
        assert clock.ENV not in env, name
    assert clock.ENV not in tpl.default_template().read_text()
