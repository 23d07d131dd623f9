"""Privacy of a ledger: its files are readable by their owner only, and tenant pseudonyms are keyed
by a secret kept outside it (``$GREENMAAS_TENANT_KEY`` or the user's key file)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import schema1
from ledger_records import file_bytes, run, span
from sqlalchemy import select

from greenmaas.errors import LedgerError
from greenmaas.ledger import Ledger
from greenmaas.ledger.keys import tenant_key, tenant_key_file, tenant_key_source
from greenmaas.ledger.models import Meta, Span


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def hmac_pseudonym(key: bytes, tenant: str) -> str:
    return "t-" + hmac.new(key, tenant.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def config_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("GREENMAAS_TENANT_KEY", raising=False)
    return home


def meta(ledger: Ledger) -> dict[str, str]:
    with ledger.read() as conn:
        return dict(conn.execute(select(Meta.key, Meta.value)).all())


def write_some(ledger: Ledger, tenant: str = "acme") -> None:
    ledger.start_run(run())
    ledger.write_spans([span("a", tenant=tenant)])


# ------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "url"])
def test_a_new_ledger_and_its_wal_and_shm_are_0600(tmp_path, as_url):
    path = tmp_path / "private.db"
    with umask(0o022), Ledger.open(f"sqlite:///{path}" if as_url else path) as led:
        write_some(led)
        with led.read():  # a connection is open: the -wal and -shm are there
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}


def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path):
    path = tmp_path / "shared.db"
    path.touch()
    os.chmod(path, 0o644)
    with umask(0o022), Ledger.open(path) as led:
        write_some(led)
        assert mode(path) == 0o644



# ------------------------------------------------------------------------------- the key file


def test_the_key_file_is_made_0600_in_a_0700_directory_and_reused(config_home):
    with umask(0o022):
        key, where = tenant_key()
    path = config_home / "greenmaas" / "tenant.key"
    assert where == str(path) == str(tenant_key_file())
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert len(key) == 32 and path.read_text() == key.hex() + "\n"
    assert tenant_key() == (key, where)
    assert [p.name for p in path.parent.iterdir()] == ["tenant.key"]  # no temporary file left
    assert tenant_key_source() == ("file", path)


def test_ledgers_key_pseudonyms_with_the_key_file(config_home, tmp_path):
    with Ledger.open(tmp_path / "a.db") as a:
        p = a.pseudonymise("acme")
    key, _ = tenant_key()
    assert p == hmac_pseudonym(key, "acme")
    assert p.startswith("t-") and len(p) == 18 and int(p[2:], 16) >= 0


def test_the_default_is_under_home_config(tmp_path):
    home = tmp_path / "home"
    assert tenant_key_file({"HOME": str(home)}) == home / ".config" / "greenmaas" / "tenant.key"
    # A relative XDG_CONFIG_HOME is ignored, as the XDG base directory spec says.
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "relative"}
    assert tenant_key_file(env) == home / ".config" / "greenmaas" / "tenant.key"


def test_concurrent_first_uses_agree_on_one_key(config_home):
    barrier = threading.Barrier(8)
    keys = []

    def first_use():
        barrier.wait()
        keys.append(tenant_key()[0])

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert bytes.fromhex((config_home / "greenmaas" / "tenant.key").read_text()) == keys[0]


def test_the_environment_variable_wins(config_home, tmp_path, monkeypatch):
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "s3cret")
    assert tenant_key() == (b"s3cret", "$GREENMAAS_TENANT_KEY")
    assert tenant_key_source() == ("env", None)
    with Ledger.open(tmp_path / "a.db") as led:
        assert led.pseudonymise("acme") == hmac_pseudonym(b"s3cret", "acme")
    assert not config_home.exists()  # no key file made


def test_same_key_same_pseudonyms_other_key_other_pseudonyms(tmp_path, monkeypatch):
    def pseudonyms(name: str) -> list[str]:
        with Ledger.open(tmp_path / name) as led:
            return [led.pseudonymise(t) for t in ("acme", "globex")]

    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "k1")
    k1 = pseudonyms("a.db")
    assert pseudonyms("b.db") == k1
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "k2")
    assert set(pseudonyms("c.db")).isdisjoint(k1)
    monkeypatch.delenv("GREENMAAS_TENANT_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user1"))
    u1 = pseudonyms("d.db")
    assert pseudonyms("e.db") == u1
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user2"))
    assert set(pseudonyms("f.db")).isdisjoint(u1 + k1)


# ----------------------------------------------------------------------- what the ledger holds


def test_a_new_ledger_holds_no_salt_or_key(config_home, db_path):
    with Ledger.open(db_path) as led:
        write_some(led, "acme")
        assert set(meta(led)) == {"application", "schema_version", "created_at", "greenmaas_version"}
    key, _ = tenant_key()
    blob = b"".join(file_bytes(db_path).values())
    assert key not in blob and key.hex().encode() not in blob and key.hex().upper().encode() not in blob


def test_a_pseudonym_cannot_be_reproduced_from_the_ledger_alone(config_home, db_path):
    with Ledger.open(db_path) as led:
        write_some(led, "acme")
        with led.read() as conn:
            (stored,) = conn.execute(select(Span.tenant)).scalars().all()
        values = list(meta(led).values())
    assert stored == hmac_pseudonym(tenant_key()[0], "acme")
    candidates = [v.encode("utf-8") for v in values]
    candidates += [bytes.fromhex(v) for v in values if len(v) % 2 == 0 and all(c in "0123456789abcdef" for c in v)]
    candidates.append(b"")
    assert all(hmac_pseudonym(k, "acme") != stored for k in candidates)


def test_an_old_ledger_keeps_its_pseudonyms_and_new_rows_use_the_new_key(config_home, db_path):
    schema1.create_sqlite(db_path)  # kept a tenant_salt in meta, as greenmaas 0.1 did
    old = hmac_pseudonym(bytes.fromhex(schema1.SALT), "acme")
    with Ledger.open(db_path) as led:
        led.write_spans([span("old", run_id="r1", tenant=old), span("new", run_id="r1", tenant="acme")])
        with led.read() as conn:
            stored = dict(conn.execute(select(Span.span_id, Span.tenant).where(Span.tenant.is_not(None))).all())
        assert meta(led)["tenant_salt"] == schema1.SALT  # left as it was
    assert stored == {"old": old, "new": hmac_pseudonym(tenant_key()[0], "acme")}
    assert stored["new"] != old


# ------------------------------------------------------------------------------- errors


def test_a_config_dir_that_cannot_be_made_is_a_one_line_error(tmp_path, monkeypatch, db_path):
    not_a_dir = tmp_path / "config-is-a-file"
    not_a_dir.write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(not_a_dir))
    monkeypatch.delenv("GREENMAAS_TENANT_KEY", raising=False)
    with Ledger.open(db_path) as led, pytest.raises(LedgerError) as info:
        led.pseudonymise("acme")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert str(not_a_dir / "greenmaas" / "tenant.key") in message and "GREENMAAS_TENANT_KEY" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_an_unwritable_config_dir_is_a_one_line_error(config_home):
    config_home.mkdir(mode=0o500)
    try:
        with pytest.raises(LedgerError) as info:
            tenant_key()
    finally:
        config_home.chmod(0o700)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "tenant.key" in message and "GREENMAAS_TENANT_KEY" in message


def test_a_damaged_key_file_is_refused_not_replaced(config_home):
    path = tenant_key_file()
    path.parent.mkdir(parents=True)
    path.write_text("not a key\n")
    with pytest.raises(LedgerError, match="not a greenmaas tenant key") as info:
        tenant_key()
    assert str(path) in str(info.value) and "GREENMAAS_TENANT_KEY" in str(info.value)
    assert path.read_text() == "not a key\n"
