"""Fixtures for the ledger tests.

A test of an open ``ledger`` alone runs on each backend (SQLite, then PostgreSQL: see
``postgres_url`` in tests/conftest.py); one that also reaches for the file (``db_path``) is about
SQLite and runs there only.
"""

from __future__ import annotations

import inspect

import pytest

from greenmaas.ledger import Ledger

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_generate_tests(metafunc):
    wants = inspect.signature(metafunc.function).parameters
    if "ledger" in wants and "db_path" not in wants:
        metafunc.parametrize("ledger_backend", BACKENDS, indirect=True)


@pytest.fixture
def ledger_backend(request):
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(request, ledger_backend, db_path):
    target = db_path if ledger_backend == "sqlite" else request.getfixturevalue("postgres_url")
    with Ledger.open(target) as led:
        yield led
