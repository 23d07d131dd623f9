"""``greenmaas devices`` says where the tenant key comes from, and never prints the key."""

from __future__ import annotations

import json

from greenmaas.ledger.keys import tenant_key
from greenmaas.sources.base import Detection
from greenmaas_cli.main import cli

NOTHING = {"detect": lambda: Detection([], [])}


def devices(runner, *args):
    result = runner.invoke(cli, ["devices", *args], obj=NOTHING, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_key_file_source_in_table_and_json(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = tmp_path / "cfg" / "greenmaas" / "tenant.key"
    assert f"Tenant key: file {path} (made on first use)" in devices(runner)
    assert not path.exists()  # listing devices makes no key
    key, _ = tenant_key()
    table = devices(runner)
    assert f"Tenant key: file {path}" in table and "first use" not in table
    data = json.loads(devices(runner, "--format", "json"))
    assert data["tenant_key"] == {"source": "file", "path": str(path)}
    for out in (table, json.dumps(data)):
        assert key.hex() not in out


def test_env_source_in_table_and_json(runner, monkeypatch):
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "very-secret-value")
    table = devices(runner)
    assert "Tenant key: $GREENMAAS_TENANT_KEY" in table
    out = devices(runner, "--format", "json")
    assert json.loads(out)["tenant_key"] == {"source": "env", "path": None}
    assert "very-secret-value" not in table + out
