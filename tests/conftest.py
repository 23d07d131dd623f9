"""Skip ``@pytest.mark.gpu`` tests unless NVML initialises and finds a GPU here; keep every test
off the developer's own tenant key; give tests a ledger on each backend; give each test the
SIGINT and SIGTERM handlers the one before it had (a meter a test leaves started keeps its
signal handlers installed: they must not chain into the next test's).

The gpu marker itself is declared in pyproject.toml. The probe runs once, and only when a gpu test
was collected, so machines without NVML pay nothing.

Ledgers on both backends: ``ledger_url`` is a ledger target (what ``Ledger.open``, ``--ledger``
and ``$GREENMAAS_LEDGER`` take) that is a SQLite file and, in a second run of the test, an empty
schema of the PostgreSQL database named by ``$GREENMAAS_TEST_POSTGRES_URL``
(``postgresql+psycopg://user:pass@127.0.0.1:5432/db``; the user needs CREATE on it).
``postgres_url`` is the PostgreSQL one alone. Each PostgreSQL test gets a schema of its own,
dropped afterwards, and reaches it through the URL (``options=-csearch_path=...``), so that
subprocesses and the CLI given the URL land in it too. Without the variable these tests skip,
saying so; where ``$CI`` is set they fail instead (``.ci/run`` starts a server and sets both).
"""

from __future__ import annotations

import os
import uuid

import pytest

#: The PostgreSQL database the ``postgres`` tests run in; unset, they skip (fail under CI).
ENV_POSTGRES = "GREENMAAS_TEST_POSTGRES_URL"


def _gpu_unavailable_reason() -> str | None:
    """None when a real NVML GPU answers; otherwise why not."""
    try:
        import pynvml
    except ImportError:
        return "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any failure means: no GPU to test on
        return f"NVML does not initialise: {exc}"
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return "NVML initialises but finds no GPU"
    except Exception as exc:  # noqa: BLE001
        return f"NVML cannot count GPUs: {exc}"
    finally:
        pynvml.nvmlShutdown()
    return None


def _private_config(monkeypatch, tmp_path_factory) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.delenv("GREENMAAS_TENANT_KEY", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _private_tenant_key_for_the_session(tmp_path_factory):
    """Fixtures of module or session scope (set up before any test's own) make their tenant key
    in a config directory of the test session, never in the developer's ``~/.config``."""
    with pytest.MonkeyPatch.context() as mp:
        _private_config(mp, tmp_path_factory)
        yield


@pytest.fixture(autouse=True)
def _private_tenant_key(tmp_path_factory, monkeypatch):
    """Each test gets its own config directory (so a tenant key file is made there, never in the
    developer's ``~/.config``) and no ``$GREENMAAS_TENANT_KEY`` unless it sets one."""
    _private_config(monkeypatch, tmp_path_factory)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a real NVIDIA GPU: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


# ------------------------------------------------------------------------ ledgers on each backend


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"postgres: runs against PostgreSQL (${ENV_POSTGRES}); skipped without it, failed under CI",
    )


def _postgres_schema_url(request) -> str:
    """A URL of a new, empty schema in the configured database, dropped when the test ends."""
    base = os.environ.get(ENV_POSTGRES, "").strip()
    if not base:
        pytest.skip(f"no PostgreSQL server configured: set {ENV_POSTGRES}=postgresql+psycopg://user:pass@host/db")
    import sqlalchemy as sa

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install greenmaas[postgres])")
    from sqlalchemy.engine import make_url

    url = make_url(base)
    if url.get_backend_name() != "postgresql":
        pytest.fail(f"{ENV_POSTGRES} must be a postgresql:// URL, not {url.get_backend_name()}://")
    schema = f"gm_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"{ENV_POSTGRES}: cannot reach the server: {str(exc.orig).strip().splitlines()[0]}")

    def drop() -> None:
        try:
            with admin.begin() as conn:
                # A connection a test left inside a transaction must not hang the suite.
                conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
                conn.execute(sa.schema.DropSchema(schema, cascade=True))
        finally:
            admin.dispose()

    request.addfinalizer(drop)
    # search_path has the test's schema alone: nothing falls through to another one. Options
    # the configured URL gives its sessions are kept.
    options = f"{url.query.get('options', '')} -csearch_path={schema}".strip()
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.fixture
def postgres_url(request) -> str:
    """An empty PostgreSQL schema of this test's own, as a SQLAlchemy URL (see the module doc)."""
    return _postgres_schema_url(request)


@pytest.fixture(scope="module")
def module_postgres_url(request) -> str:
    """An empty PostgreSQL schema shared by a module's tests (for data that is costly to make)."""
    return _postgres_schema_url(request)


#: The ledger backends, as parameters: PostgreSQL's carry the ``postgres`` mark.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def ledger_url(request, tmp_path) -> str:
    """Where a new, empty ledger goes: a SQLite file path, then a PostgreSQL schema's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return _postgres_schema_url(request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a ``postgres`` test that skips has failed: CI must run them for real."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _on_ci() and item.get_closest_marker("postgres") is not None:
        if hasattr(report, "wasxfail"):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"PostgreSQL test skipped under CI, where it must run: {reason}"


@pytest.fixture(autouse=True)
def _signal_handlers_as_found():
    import signal

    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in found.items():
        if handler is not None and signal.getsignal(s) is not handler:
            signal.signal(s, handler)
