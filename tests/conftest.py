"""Skip ``@pytest.mark.gpu`` tests unless NVML initialises and finds a GPU here; keep every test
off the developer's own tenant key.

The marker itself is declared in pyproject.toml. The probe runs once, and only when a gpu test
was collected, so machines without NVML pay nothing.
"""

from __future__ import annotations

import pytest


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
