"""Small parsers shared by the readers of user files (traces, spans, intensity series).

:class:`CsvFile` is the one way greenmaas reads a CSV a user gives it: every problem (a file that
cannot be opened, bytes that are not UTF-8, a malformed or empty file, a missing column) is an
:class:`~greenmaas.errors.InputError` naming the file and the line, one line long. Each reader
adds the checks of its own columns (:func:`finite_number`, :func:`greenmaas.timeparse.parse_time`).
"""

from __future__ import annotations

import csv
import math
import os
from typing import IO, Any, Iterator, NoReturn, Sequence

from .errors import InputError

__all__ = ["finite_number", "CsvFile"]

_BOM = "\ufeff"


def finite_number(text: str, column: str, path: str, line: int) -> float:
    """``text`` as a finite float, or an :class:`InputError` naming the file, line and column."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{column} is not a number: {_short(text)!r}", path=path, line=line) from None
    if not math.isfinite(value):
        raise InputError(f"{column} is not a finite number: {_short(text)!r}", path=path, line=line)
    return value


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CsvFile:
    """A CSV file a user gave, read row by row as UTF-8 (a byte-order mark is allowed).

    ``what`` names the file's role in messages (``trace``, ``spans``, ``intensity CSV``),
    ``expected`` the header wanted (``t,device,energy_j,power_w``), and ``verb`` what could not be
    done when it cannot be opened (``cannot open trace: ...``). Use it as a context manager;
    entering it opens the file and reads the header (:attr:`header`: names stripped, on line
    :attr:`header_line`); :meth:`rows` then yields ``(line, fields)`` for each non-blank row after
    it, ``line`` being the line the row starts on (1-based, as an editor counts them).

    Raises :class:`InputError`, naming :attr:`path` and the line, for a file that cannot be
    opened, is empty, holds bytes that are not UTF-8 (the line of the first such byte), or is not
    CSV (a NUL byte, a stray quote, a field over :func:`csv.field_size_limit`).
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str, expected: str, verb: str = "open"):
        self.path = os.fspath(path)
        self.verb = verb
        self.what = what
        self.expected = expected
        self.header: list[str] = []
        self.header_line = 1
        self._fh: IO[str] | None = None
        self._reader: Any = None  # csv.reader over the file
        self._line = 1  # the line the next row starts on

    def __enter__(self) -> CsvFile:
        try:
            self._fh = open(self.path, newline="", encoding="utf-8")
        except (OSError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or str(exc)
            raise InputError(f"cannot {self.verb} {self.what}: {problem}", path=self.path) from exc
        self._reader = csv.reader(self._fh, strict=True)  # a stray quote is an error, not data
        try:
            for line, row in self._numbered():
                self.header = [cell.strip() for cell in row]
                if self.header:
                    self.header[0] = self.header[0].lstrip(_BOM).strip()
                self.header_line = line
                return self
        except BaseException:
            self.close()
            raise
        self.close()
        raise InputError(f"empty file: expected a header row {self.expected}", path=self.path, line=1)

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def fail(self, problem: str, line: int | None = None) -> NoReturn:
        """Raise the :class:`InputError` for ``problem`` at ``line`` of this file."""
        raise InputError(problem, path=self.path, line=line)

    def columns(self, lower: bool = False) -> dict[str, int]:
        """``{column name: index}`` of the header (the first of repeated names; lower-cased names
        with ``lower``)."""
        out: dict[str, int] = {}
        for i, name in enumerate(self.header):
            out.setdefault(name.lower() if lower else name, i)
        return out

    def require(self, names: Sequence[str], lower: bool = False) -> dict[str, int]:
        """:meth:`columns`, after checking every one of ``names`` is there (else an error naming
        the missing ones and the header found, on the header's line)."""
        found = self.columns(lower)
        missing = [n for n in names if n not in found]
        if missing:
            self.fail(f"missing column {', '.join(missing)} (header: {','.join(self.header)})", self.header_line)
        return found

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """``(line, fields)`` of every non-blank row after the header."""
        return self._numbered()

    def _numbered(self) -> Iterator[tuple[int, list[str]]]:
        reader = self._reader
        assert reader is not None, "use CsvFile as a context manager"
        try:
            for row in reader:
                line = self._line
                self._line = reader.line_num + 1
                if row and (row[0].strip() or any(cell.strip() for cell in row)):
                    yield line, row
        except csv.Error as exc:
            raise InputError(f"malformed CSV: {exc}", path=self.path, line=self._line) from exc
        except UnicodeDecodeError as exc:
            # The decoder reads ahead of the rows, so find the line from the bytes themselves.
            line, column, byte = _undecodable(self.path)
            raise InputError(
                f"not UTF-8 text (byte 0x{byte:02x} at column {column}); "
                f"save the {self.what} as UTF-8",
                path=self.path, line=line,
            ) from exc


def _undecodable(path: str) -> tuple[int, int, int]:
    """The line, 1-based byte column and value of the first byte of ``path`` that is not UTF-8.

    Line by line (a newline byte is never part of a multi-byte UTF-8 sequence), so memory stays
    bounded by the longest line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, exc.start + 1, raw[exc.start]
    return 1, 1, 0  # pragma: no cover - only called after a decode failed
