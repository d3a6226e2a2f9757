"""Image URIs in: the rows of a CSV or text file, or the files a glob matches."""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.csvlines import csv_fields
from pipeline.formats import FORMATS
from pipeline.metrics import counter
from pipeline.records import FAILED, Failure

SKIPPED = "skipped"
URI_COLUMN = "uri"
_GLOB_CHARACTERS = "*?["
_SNIFF_LINES = 1000
_BOM = "\ufeff"


class InputError(ValueError):
    """The --input cannot be read as a list of images."""


def is_glob(path: str) -> bool:
    return any(character in path for character in _GLOB_CHARACTERS)


@dataclass(frozen=True)
class CsvLayout:
    """Where the URI sits in each row, and how many leading lines to skip."""

    column: int = 0
    skip_lines: int = 0


def _fields(line: str) -> list[str]:
    return csv_fields(line.lstrip(_BOM))


def _lines(handle):
    """The lines of an open Beam file; readline() also works on a .gz one (CompressedFile)."""
    while line := handle.readline():
        yield line


def sniff_layout(path: str) -> CsvLayout:
    """Finds a header naming a `uri` column in the first non-blank line, if there is one."""
    if not FileSystems.exists(path):
        raise InputError(f"--input {path}: no such file (give a CSV of image URIs or a glob)")
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            line = raw.decode("utf-8", errors="replace").lstrip(_BOM).strip()
            if not line:
                if number >= _SNIFF_LINES:
                    break
                continue
            names = [name.strip().lower() for name in _fields(line)]
            if URI_COLUMN in names:
                return CsvLayout(column=names.index(URI_COLUMN), skip_lines=number)
            return CsvLayout()
    return CsvLayout()


def count_inputs(path: str, limit: int) -> int | None:
    """How many images path lists or matches, or None if more than limit (read no further)."""
    if is_glob(path):
        matched = FileSystems.match([path], limits=[limit + 1])[0].metadata_list
        return len(matched) if len(matched) <= limit else None
    layout = sniff_layout(path)
    rows = 0
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            line = raw.decode("utf-8", errors="replace")
            if number > layout.skip_lines and any(field.strip() for field in _fields(line)):
                rows += 1
                if rows > limit:
                    return None
    return rows


def check_glob(pattern: str) -> None:
    if not FileSystems.match([pattern], limits=[1])[0].metadata_list:
        raise InputError(f"--input {pattern}: the pattern matches no files")


class ParseRowFn(beam.DoFn):
    """One CSV line to its URI; a non-blank row without one is a read failure."""

    def __init__(self, column: int):
        self._column = column
        self._rows = counter("rows_read")

    def process(self, line: str):
        fields = [field.strip() for field in _fields(line)]
        if any(fields):  # blank lines and all-empty rows are not rows
            self._rows.inc()
            uri = fields[self._column] if self._column < len(fields) else ""
            if uri:
                yield uri
            else:
                yield pvalue.TaggedOutput(
                    FAILED,
                    Failure(line.strip(), "read", "MissingUri", f"no URI in column {self._column}"),
                )


class CountRepeatsFn(beam.DoFn):
    """(uri, occurrences) to the number of rows dropped as repeats."""

    def __init__(self):
        self._duplicates = counter("duplicates_dropped")

    def process(self, uri_and_count: tuple[str, int]):
        repeats = uri_and_count[1] - 1
        if repeats:
            self._duplicates.inc(repeats)
        yield repeats


class SplitDoneFn(beam.DoFn):
    """(uri, {rows: [n], done: [...]}) to the URI if it still needs embedding, else `skipped`."""

    def __init__(self):
        self._skipped = counter("skipped_existing")

    def process(self, joined):
        uri, groups = joined
        if not groups["rows"]:
            return  # embedded earlier, not listed now
        if groups["done"]:
            self._skipped.inc()
            yield pvalue.TaggedOutput(SKIPPED, 1)
        else:
            yield uri


class ReadImageUris(beam.PTransform):
    """Reads URIs and drops repeats (and, given `done`, URIs embedded before).

    Outputs uris, failed, and the counts rows, duplicates and skipped (ints).
    CSV rule: if the first non-blank line has a column named `uri` it is a header and
    that column holds the URIs; otherwise every row's first column does. Other columns
    are ignored; blank lines and whitespace around fields are ignored.
    """

    def __init__(self, input_path: str, done=None):
        super().__init__()
        self._input = input_path
        self._done = done

    def expand(self, pbegin):
        if is_glob(self._input):
            uris = (
                pbegin
                | "Match files" >> fileio.MatchFiles(self._input)
                | "Take paths" >> beam.Map(lambda metadata: metadata.path)
            )
            failed = pbegin | "No read failures" >> beam.Create([])
        else:
            layout = sniff_layout(self._input)
            lines = pbegin | "Read lines" >> beam.io.ReadFromText(
                self._input, skip_header_lines=layout.skip_lines
            )
            parsed = lines | "Parse rows" >> beam.ParDo(ParseRowFn(layout.column)).with_outputs(
                FAILED, main="uris"
            )
            uris, failed = parsed.uris, parsed[FAILED]
        # Counting per URI groups by URI: besides dropping repeats, this shuffle spreads
        # the URIs over all workers (a small CSV is read as a single split).
        occurrences = uris | "Count occurrences" >> beam.combiners.Count.PerElement()
        if self._done is None:
            pending = occurrences | "Unique URIs" >> beam.Keys()
            skipped = pbegin | "Nothing skipped" >> beam.Create([])
        else:
            done = self._done | "Mark done" >> beam.Map(lambda uri: (uri, True))
            split = (
                {"rows": occurrences, "done": done}
                | "Join with done" >> beam.CoGroupByKey()
                | "Drop done" >> beam.ParDo(SplitDoneFn()).with_outputs(SKIPPED, main="uris")
            )
            pending, skipped = split.uris, split[SKIPPED]
        return {
            "uris": pending,
            "failed": failed,
            "rows": (
                occurrences
                | "Occurrences" >> beam.Values()
                | "Rows with a URI" >> beam.CombineGlobally(sum)
            ),
            "duplicates": (
                occurrences
                | "Repeats" >> beam.ParDo(CountRepeatsFn())
                | "Duplicates" >> beam.CombineGlobally(sum)
            ),
            "skipped": skipped | "Skipped" >> beam.CombineGlobally(sum),
        }


class ReadEmbeddedUris(beam.PTransform):
    """URIs already embedded under the output: the record of work an earlier run did."""

    def __init__(self, output: str, output_format: str):
        super().__init__()
        self._output = output
        self._format = FORMATS[output_format]

    def expand(self, pbegin):
        pattern = self._format.record_files(self._output)
        return (
            pbegin
            | "Match earlier outputs"
            >> fileio.MatchFiles(pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Read URIs" >> self._format.read_uris()
        )
