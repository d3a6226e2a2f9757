"""One CSV record to a line and back, quoted as the csv module does."""

from __future__ import annotations

import csv
import io


def csv_line(fields) -> str:
    """One CSV record without its line end."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()


def csv_fields(line: str, strict: bool = False) -> list[str]:
    """The fields of one line; strict raises csv.Error on a stray or unclosed quote."""
    return next(csv.reader([line], strict=strict), [])
