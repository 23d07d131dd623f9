"""``%load_ext greenmaas`` and ``%%measure``, in a real IPython ``InteractiveShell``.

The meter runs on a :class:`FakeClock` the cells advance, over a constant 200 W device: a cell
that advances the clock by 1.5 s used 300 J.
"""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from greenmaas.analysis import read_ledger  # noqa: E402
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

POWER_W = 200.0


@pytest.fixture
def shell(tmp_path):
    ip = InteractiveShell.instance()
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    meter = Meter(sources=[src], ledger=str(tmp_path / "greenmaas.db"), clock=clock, background=False,
                  accounting=False, handle_signals=False)
    saved = dict(ip.user_ns)
    ip.user_ns.update(clock=clock, meter=meter)
    result = ip.run_cell("%load_ext greenmaas")
    assert result.success, result.error_in_exec
    meter.start()
    ip.ledger = str(tmp_path / "greenmaas.db")
    yield ip
    meter.stop()
    ip.user_ns.clear()
    ip.user_ns.update(saved)


def test_measure_runs_the_cell_and_prints_its_result(shell, capsys):
    result = shell.run_cell(
        "%%measure warm-up --model tiny --phase training --meter meter --as span\n"
        "clock.advance(1.5)\n"
        "answer = 41 + 1\n"
        "answer\n"
    )
    assert result.success
    out = capsys.readouterr().out
    assert "42" in out  # the cell's last value is displayed, as in any cell
    assert "warm-up: 300.0 ± 0.0 J in 1.50 s (counter)" in out
    span = shell.user_ns["span"]
    assert shell.user_ns["answer"] == 42
    assert (span.name, span.model, span.phase, span.status) == ("warm-up", "tiny", "training", "ok")
    assert span.result.energy_j == pytest.approx(POWER_W * 1.5)
    shell.user_ns["meter"].stop()
    (row,) = read_ledger(shell.ledger).itertuples()
    assert (row.name, row.model, row.phase, row.status) == ("warm-up", "tiny", "training", "ok")
    assert row.energy_j == pytest.approx(POWER_W * 1.5)


def test_without_meter_the_current_one_is_used(shell, capsys):
    shell.run_cell("%%measure 'two words' --quiet --as span\n_ = clock.advance(0.25)\n")
    assert capsys.readouterr().out == ""
    span = shell.user_ns["span"]
    assert span.name == "two words"
    assert span.run_id == shell.user_ns["meter"].run_id  # the meter started in the session
    assert span.result.energy_j == pytest.approx(POWER_W * 0.25)


def test_a_cell_that_raises_is_recorded_as_an_error(shell, capsys):
    result = shell.run_cell(
        "%%measure broken --meter meter --as span\n"
        "clock.advance(0.5)\n"
        "raise ValueError('no such column')\n"
    )
    out = capsys.readouterr().out
    assert "ValueError" in out and "no such column" in out  # shown as any cell's error
    assert "broken: 100.0 ± 0.0 J in 0.50 s (counter)" in out
    assert result.success  # the magic itself did not fail
    assert shell.user_ns["span"].status == "error"


@pytest.mark.parametrize(
    "line, message",
    [
        ("%%measure", "a span NAME is needed"),
        ("%%measure step --phase warmup", "--phase must be one of training, inference, other"),
        ("%%measure step --model", "--model needs a value"),
        ("%%measure step --device gpu", "unknown option '--device'"),
        ("%%measure a b", "one NAME only"),
        ("%%measure step --meter nowhere", "--meter nowhere is not defined"),
        ("%%measure step --meter clock", "is a FakeClock, not a greenmaas Meter"),
    ],
)
def test_bad_options_are_one_line_usage_errors_and_the_cell_does_not_run(shell, capsys, line, message):
    shell.user_ns.pop("ran", None)
    result = shell.run_cell(f"{line}\nran = True\n")
    assert not result.success
    err = capsys.readouterr()
    text = err.out + err.err
    assert "UsageError" in text and message in text
    assert "Traceback" not in text
    assert "ran" not in shell.user_ns
