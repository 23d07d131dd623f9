"""The key tenant pseudonyms are made with, kept outside the ledger.

A pseudonym is HMAC-SHA256 of the tenant keyed by a secret (see
:meth:`greenmaas.ledger.Ledger.pseudonymise`). The secret never goes into a ledger, so whoever
holds a ledger file alone cannot reverse its pseudonyms by trying likely tenant names. It is:

* ``$GREENMAAS_TENANT_KEY`` when set (any string, used as the HMAC key as its UTF-8 bytes):
  set the same value everywhere pseudonyms must match across machines and users;
* else a key file of this user, ``$XDG_CONFIG_HOME/greenmaas/tenant.key`` (by default
  ``~/.config/greenmaas/tenant.key``): 32 random bytes as hex, created on first use with mode
  0600 in a directory created 0700, written whole to a temporary file and then linked into
  place, so that concurrent first uses agree on one key.

Functions take the environment as a mapping (``os.environ`` by default), so tests point them at a
temporary directory by setting ``XDG_CONFIG_HOME`` or ``GREENMAAS_TENANT_KEY``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Mapping

from .._paths import mkdir_private
from ..errors import LedgerError

__all__ = ["ENV_TENANT_KEY", "KEY_FILE_NAME", "tenant_key", "tenant_key_file", "tenant_key_source"]

#: Secret for tenant pseudonyms; when unset, the user's key file (:func:`tenant_key_file`) is used.
ENV_TENANT_KEY = "GREENMAAS_TENANT_KEY"
#: The key file's name, in ``$XDG_CONFIG_HOME/greenmaas/``.
KEY_FILE_NAME = "tenant.key"

_KEY_BYTES = 32
_KEY_TEXT = re.compile(r"[0-9a-f]{64}")
_HOW = f"set {ENV_TENANT_KEY} to a secret string instead"


def tenant_key_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where this user's key file is, whether or not it exists yet: under ``$XDG_CONFIG_HOME``
    when it is set to an absolute path (as the XDG base directory spec says), else under
    ``~/.config``."""
    config = env.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and os.path.isabs(config) else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "greenmaas" / KEY_FILE_NAME


def tenant_key_source(env: Mapping[str, str] = os.environ) -> tuple[str, Path | None]:
    """Where :func:`tenant_key` takes the key from, without reading or creating anything:
    ``("env", None)`` or ``("file", path of the key file)``."""
    if env.get(ENV_TENANT_KEY):
        return "env", None
    return "file", tenant_key_file(env)


def tenant_key(env: Mapping[str, str] = os.environ) -> tuple[bytes, str]:
    """The HMAC key for tenant pseudonyms, and where it came from (``$GREENMAAS_TENANT_KEY``, or
    the key file's path). Creates the key file on first use. Raises :class:`LedgerError` (one
    line, naming the file and the variable to set instead) when it cannot be read or created."""
    value = env.get(ENV_TENANT_KEY)
    if value:
        return value.encode("utf-8"), f"${ENV_TENANT_KEY}"
    path = tenant_key_file(env)
    try:
        key = _read(path)
        if key is None:
            key = _create(path)
    except OSError as exc:
        problem = exc.strerror or str(exc)
        if exc.filename and os.fspath(exc.filename) != str(path):
            problem = f"{exc.filename}: {problem}"
        raise LedgerError(f"cannot read or create the tenant key file {path} ({problem}); {_HOW}") from exc
    return key, str(path)


def _read(path: Path) -> bytes | None:
    """The key in the file at ``path``, or None when there is none."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = ""
    if not _KEY_TEXT.fullmatch(text):
        raise LedgerError(f"{path}: not a greenmaas tenant key (expected 64 hex digits); fix or remove it, or {_HOW}")
    return bytes.fromhex(text)


def _create(path: Path) -> bytes:
    """Make a new key file at ``path`` and return its key; if another process made one first,
    return that one (its file is never replaced)."""
    if not path.parent.parent.is_dir():
        os.makedirs(path.parent.parent, 0o700, exist_ok=True)
    mkdir_private(path.parent)
    key = secrets.token_bytes(_KEY_BYTES)
    text = (key.hex() + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, text)
    try:
        os.link(tmp, path)  # atomic, and never over a key another process has just made
    except FileExistsError:
        return _existing(path)
    except OSError:
        # No hard links on this filesystem (some network or FUSE ones): create it in place.
        try:
            _write_new(path, text)
        except FileExistsError:
            return _existing(path)
    finally:
        os.unlink(tmp)
    return key


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path``, mode 0600; FileExistsError if there is one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _existing(path: Path) -> bytes:
    """The key of the file another process created at ``path`` first."""
    key = _read(path)
    if key is None:  # pragma: no cover - made and removed meanwhile
        raise FileNotFoundError(2, "key file removed while being created", str(path))
    return key
