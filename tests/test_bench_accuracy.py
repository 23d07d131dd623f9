"""The accuracy benchmark (examples/bench_accuracy.py) runs small and writes its report."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load():
    spec = importlib.util.spec_from_file_location("example_bench_accuracy", EXAMPLES / "bench_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_bench_accuracy_writes_its_report_and_live_equals_offline(tmp_path):
    bench = _load()
    out = tmp_path / "accuracy.md"
    argv = [
        "--seconds", "3", "--seeds", "1", "--periods", "20", "--behaviours", "none,instant",
        "--workloads", "solo,batched,overlapping", "--jobs", "1", "--quiet", "--out", str(out),
    ]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert text.startswith("# Per-request accuracy")
    assert bench.TABLE_HEADER in text
    assert bench.TARGET_HEADER in text
    regenerate = next(line for line in text.splitlines() if line.startswith("Regenerate with"))
    assert "examples/bench_accuracy.py" in regenerate and "--seconds 3" in regenerate and "--seeds 1" in regenerate
    assert "## Crashes" not in text
    # Less regular counters: their own section, one live row per counter and workload.
    section = text.split("## A less regular counter", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| jitter")]
    assert len(rows) == 2 * 3, section
    # One row per (workload, behaviour) in the target table, each with live vs offline <= 1e-9.
    table = text.split(bench.TARGET_HEADER, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert len(table) == 6
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "20"
        assert int(cells[3]) > 0  # requests
        assert float(cells[8]) <= 1e-9, line  # live vs offline
        assert cells[9] in ("MET", "NOT MET")
    m = re.search(r"largest relative difference over every request of every case \*\*([0-9.e+-]+)\*\*", text)
    assert m is not None and float(m.group(1)) <= 1e-9
    assert "results not final after `meter.stop()`: 0" in text
