"""The README's quick start runs as printed and records what it says."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs_and_records_its_three_epochs(tmp_path):
    code = quick_start()
    assert "..." not in code  # no placeholders: it runs as printed
    env = {"PATH": "/usr/bin:/bin", "GREENMAAS_LOCATION": "FR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch-0", "epoch-1", "epoch-2"]
    assert all(" ± " in line and "final=True" in line for line in lines)
    with sqlite3.connect(tmp_path / "greenmaas.db") as db:
        rows = db.execute("SELECT name, model, phase FROM spans ORDER BY start").fetchall()
        assert rows == [(f"epoch-{i}", "resnet50", "training") for i in range(3)]
        assert db.execute("SELECT status FROM runs").fetchall() == [("finished",)]
        assert db.execute("SELECT COUNT(*) FROM reads").fetchone()[0] > 0
