"""One CSV record to a line and back, quoted as the csv module does."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

# Every line boundary of str.splitlines. QUOTE_MINIMAL quotes a field holding "any of the
# characters in lineterminator" (the csv module's documentation), so with all of them as
# the terminator a field that any reader might end a record at is quoted: CR and LF for
# RFC 4180 readers (the csv module, DuckDB, pyarrow, pandas), the others for a reader that
# splits lines as str.splitlines does before it parses. The terminator is then cut off.
_LINE_BREAKS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def csv_line(fields: Iterable) -> str:
    """One CSV record without its line end; fields holding a line break are quoted."""
    line = io.StringIO()
    csv.writer(line, lineterminator=_LINE_BREAKS).writerow(fields)
    return line.getvalue().removesuffix(_LINE_BREAKS)


def csv_fields(line: str, strict: bool = False) -> list[str]:
    """The fields of one line; strict raises csv.Error on a stray or unclosed quote."""
    return next(csv.reader([line], strict=strict), [])


def csv_records(path: str, skip_header: bool = False) -> Iterator[list[str]]:
    """The records of a CSV file (any Beam file system), blank lines skipped; a quoted
    field may hold line breaks."""
    # Whole records, so a file is read whole: Beam's ReadAllFromText splits files at line
    # ends and would cut a quoted line break (its ReadFromCsv needs pandas, and file names
    # known when the pipeline is built).
    with (
        FileSystems.open(path) as handle,
        io.TextIOWrapper(handle, encoding="utf-8", newline="") as text,
    ):
        records = (record for record in csv.reader(text) if record)
        if skip_header:
            next(records, None)
        yield from records


def unwritable(value: str) -> str | None:
    """Why no CSV file can give value back to every reader, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"is not UTF-8 text (a lone surrogate at character {error.start})"
    if "\0" in value:
        # Python's csv before 3.11 and BigQuery's CSV load refuse it; C tools end text there.
        return f"holds a NUL character (at character {value.index(chr(0))})"
    return None
