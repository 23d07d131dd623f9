"""Fixtures for the ledger tests."""

from __future__ import annotations

import pytest

from greenmaas.ledger import Ledger


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(db_path):
    with Ledger.open(db_path) as led:
        yield led
