"""The examples run, in process and small, and the serving example's books balance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from greenmaas.clock import SystemClock  # noqa: E402
from greenmaas.testing import StaticSource  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def serve():
    return _load("serve_batched")


def _sources():
    # A device whose energy follows the real clock: the example's timing is real, its power fixed.
    return [StaticSource(SystemClock(), {"gpu:0": {"energy_j": lambda t: 250.0 * t}})]


def test_serve_example_balances_its_books_and_fills_the_ledger(serve, tmp_path, capsys):
    ledger = tmp_path / "serve.db"
    argv = ["--requests", "24", "--rate", "400", "--max-tokens", "6", "--hidden", "32", "--ledger", str(ledger)]
    assert serve.main(argv, sources=_sources()) == 0
    out = capsys.readouterr().out
    assert "req-0000" in out and "ok" in out and "MISMATCH" not in out

    from click.testing import CliRunner
    from greenmaas_cli.main import cli

    res = CliRunner().invoke(cli, ["report", "--ledger", str(ledger), "--by", "request", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert sum(line.startswith("req-") for line in res.output.splitlines()) == 24


def _span(by_device):
    return SimpleNamespace(result=SimpleNamespace(by_device_j=by_device))


def test_reconcile_adds_requests_and_idle_per_device(serve):
    totals = {
        "gpu:0": {"total_j": 10.0, "attributed_j": 7.0, "idle_j": 3.0},
        "gpu:1": {"total_j": 5.0, "attributed_j": 5.0, "idle_j": 0.0},
    }
    spans = [_span({"gpu:0": 3.0, "gpu:1": 2.5}), _span({"gpu:0": 4.0, "gpu:1": 2.5})]
    books = serve.reconcile(totals, spans, {"gpu:0": "counter"})
    assert [(b.device, b.ok) for b in books] == [("gpu:0", True), ("gpu:1", True)]
    assert books[0].method == "counter" and books[1].method == "?"
    spans[0].result.by_device_j["gpu:0"] = 3.1  # a request counted twice, or energy lost
    assert not serve.reconcile(totals, spans, {})[0].ok


def test_quickstart_runs(capsys):
    quickstart = _load("quickstart")
    argv = ["--epochs", "2", "--samples", "512", "--batch-size", "128", "--hidden", "32", "--inference-calls", "1"]
    argv += ["--epoch-seconds", "0"]  # one pass per epoch
    assert quickstart.main([*argv, "--no-ledger"]) == 0
    out = capsys.readouterr().out
    assert "epoch 0:" in out and "epoch 1:" in out and "spans" in out and "idle" in out
