"""Image URIs in: the rows of a CSV or text file, of a Parquet manifest (manifests.py), or
the files a glob matches."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders, pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.common import FAILED, Failure, counter, csv_fields
from pipeline.inputs.loading import DEFAULT_MAX_IMAGE_BYTES, Decoding
from pipeline.inputs.manifests import (
    ManifestLayout,
    ReadManifestRows,
    count_manifest_rows,
    holds_strings,
    is_folder,
    keepable,
    manifest_files,
    manifest_pattern,
    manifest_uris,
    read_schema,
)
from pipeline.inputs.shards import MEMBER_REPEATS, MEMBER_ROWS, OpenShards, image_uris
from pipeline.inputs.uris import SHARD_SUFFIXES, is_shard

SKIPPED = "skipped"
REPEATS = "repeats"
# The URI column a CSV header or a manifest's schema names, by default (any case).
DEFAULT_URI_COLUMNS = ("uri", "url")
_GLOB_CHARACTERS = "*?["
_SNIFF_LINES = 1000
_BOM = "\ufeff"
_SHOWN_CHARACTERS = 200


class InputError(ValueError):
    """The --input cannot be read as a list of images."""


def is_glob(path: str) -> bool:
    return any(character in path for character in _GLOB_CHARACTERS)


@dataclass(frozen=True)
class CsvLayout:
    """Where the URI sits in each row, how many leading lines to skip, the header's names
    (if there is a header) and the positions of the columns kept with each image."""

    column: int = 0
    skip_lines: int = 0
    header: tuple[str, ...] = ()
    kept: tuple[int, ...] = ()


def _fields(line: str, strict: bool = False) -> list[str]:
    return csv_fields(line.lstrip(_BOM), strict)


def _loose_fields(line: str) -> list[str] | None:
    """The fields as the lenient reader sees them, or None where even it cannot: a field
    over the csv module's size limit, a carriage return inside an unquoted field."""
    try:
        return _fields(line)
    except csv.Error:
        return None


def _quote_left_open(line: str) -> bool:
    """Whether a quoted field is still open at the line's end: the first half of a
    record whose field holds a line break (the csv module's strict mode says so)."""
    try:
        _fields(line, strict=True)
    except csv.Error as error:
        return "unexpected end of data" in str(error)
    return False


def _shown(line: str) -> str:
    line = line.strip()
    return line if len(line) <= _SHOWN_CHARACTERS else f"{line[:_SHOWN_CHARACTERS]}..."


def _lines(handle):
    """The lines of an open Beam file; readline() also works on a .gz one (CompressedFile)."""
    while line := handle.readline():
        yield line


def uri_position(names: tuple[str, ...], uri_column: str = "") -> int | None:
    """Where the URI column is among names: the --uri_column, exactly; by default a `uri`
    column, else a `url` one, in any case. None if there is none."""
    if uri_column:
        return names.index(uri_column) if uri_column in names else None
    lowered = [name.lower() for name in names]
    for name in DEFAULT_URI_COLUMNS:
        if name in lowered:
            return lowered.index(name)
    return None


def sniff_layout(path: str, uri_column: str = "") -> CsvLayout:
    """Finds a header naming the URI column (uri_position) in the first non-blank line, if
    there is one; with a --uri_column there must be one.

    A first line that is not UTF-8 text is a row (which the reader dead-letters), unless
    it names the URI column: a header's names must be read exactly.
    """
    if not FileSystems.exists(path):
        raise InputError(f"--input {path}: no such file (give a CSV of image URIs or a glob)")
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            line = raw.decode("utf-8", errors="replace").lstrip(_BOM).strip()
            if not line:
                if number >= _SNIFF_LINES:
                    break
                continue
            fields = _loose_fields(line)
            header = tuple(name.strip() for name in fields) if fields is not None else ()
            column = uri_position(header, uri_column)
            if column is None:
                if uri_column:
                    raise InputError(
                        f"--uri_column {uri_column}: not in the header of {path} (its first "
                        f"line: {_shown(line)})"
                    )
                return CsvLayout()  # no header: every row's first column is its URI
            _check_utf8(raw, number, path)
            return CsvLayout(column, skip_lines=number, header=header)
    return CsvLayout()


def _check_utf8(raw: bytes, number: int, path: str) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"--input: line {number} of {path}, its header, is not UTF-8 text "
            f"({error.reason} at byte {error.start}: "
            f"{raw.decode('utf-8', errors='backslashreplace').strip()}); save the CSV as UTF-8"
        ) from None


def keep_columns_layout(
    path: str, keep_columns: tuple[str, ...], uri_column: str = ""
) -> CsvLayout | ManifestLayout:
    """The input's layout: where its URIs and keep_columns are. InputError if the input
    cannot carry them (a glob of images, a CSV without a header, a name its header or
    Parquet schema lacks)."""
    if lists_shards(path, uri_column):
        _check_no_listed_columns(path, keep_columns, uri_column)
        keep_columns = ()  # the shards' sibling members' extensions (OpenShardsFn)
    pattern = manifest_pattern(path)
    if pattern is not None:
        return manifest_layout(path, pattern, keep_columns, uri_column)
    if is_glob(path):
        for flag, given in (("--keep_columns", keep_columns), ("--uri_column", uri_column)):
            if given:
                raise InputError(
                    f"{flag} needs a CSV input with a header row or a Parquet manifest; "
                    f"--input {path} is a glob of images, which has no columns"
                )
        return CsvLayout()
    layout = sniff_layout(path, uri_column)
    if not keep_columns:
        return layout
    if not layout.header:
        raise InputError(
            f"--keep_columns needs a header row naming a {' or '.join(DEFAULT_URI_COLUMNS)} "
            f"column (or the --uri_column); the first line of {path} is not one"
        )
    missing = [name for name in keep_columns if name not in layout.header]
    if missing:
        raise InputError(
            f"--keep_columns: {', '.join(missing)} not in the header of {path} "
            f"(its columns: {', '.join(layout.header)})"
        )
    kept = tuple(layout.header.index(name) for name in keep_columns)
    return CsvLayout(layout.column, layout.skip_lines, layout.header, kept)


def _check_no_listed_columns(path: str, keep_columns: tuple[str, ...], uri_column: str) -> None:
    """In a listing of shards --keep_columns names sibling members' extensions: a name
    that is also one of the listing's own columns would be read as neither."""
    pattern = manifest_pattern(path)
    if pattern is not None:
        names = tuple(read_schema(manifest_files(pattern)[0]).names)
    elif is_glob(path):
        return
    else:
        names = sniff_layout(path, uri_column).header
    clashes = [name for name in keep_columns if name in names]
    if clashes:
        raise InputError(
            f"--keep_columns {','.join(clashes)}: {path} lists WebDataset shards, whose kept "
            "columns are their sibling members' extensions (txt, json), not the listing's "
            "own columns"
        )


def manifest_layout(
    path: str, pattern: str, keep_columns: tuple[str, ...], uri_column: str = ""
) -> ManifestLayout:
    """The manifest's URI column and kept columns, checked against its first file's
    schema: InputError for no files, a column the schema lacks, or one of a type that
    cannot be read as a URI or kept (manifests.keepable)."""
    files = manifest_files(pattern)
    if not files:
        raise InputError(f"--input {path}: {_no_parquet_files(path)}")
    schema = _schema(files[0])
    uri = _manifest_uri_column(files[0], schema, uri_column)
    _check_kept(files[0], schema, keep_columns)
    return ManifestLayout(pattern, uri, tuple(keep_columns))


def _no_parquet_files(path: str) -> str:
    if is_folder(path):
        return "the folder holds no .parquet files (for a folder of images, give a glob)"
    return "the pattern matches no files" if is_glob(path) else "no such file"


def _schema(path: str) -> pa.Schema:
    try:
        return read_schema(path)
    except pa.ArrowException as error:
        raise InputError(f"--input: {path} is not a Parquet file ({error})") from None


def _manifest_uri_column(path: str, schema: pa.Schema, uri_column: str) -> str:
    names = tuple(schema.names)
    position = uri_position(names, uri_column)
    columns = f"(its columns: {', '.join(names)})"
    if position is None and uri_column:
        raise InputError(
            f"--uri_column {uri_column}: not in the Parquet schema of {path} {columns}"
        )
    if position is None:
        raise InputError(
            f"--input {path}: no {' or '.join(DEFAULT_URI_COLUMNS)} column; name the column "
            f"of image URIs with --uri_column {columns}"
        )
    uri = names[position]
    if not holds_strings(schema.field(uri).type):
        raise InputError(
            f"--input {path}: its URI column {uri} holds {schema.field(uri).type}, not "
            "strings (name another with --uri_column)"
        )
    return uri


def _check_kept(path: str, schema: pa.Schema, keep_columns: tuple[str, ...]) -> None:
    names = schema.names
    missing = [name for name in keep_columns if name not in names]
    if missing:
        raise InputError(
            f"--keep_columns: {', '.join(missing)} not in the Parquet schema of {path} "
            f"(its columns: {', '.join(names)})"
        )
    unkeepable = [name for name in keep_columns if not keepable(schema.field(name).type)]
    if unkeepable:
        described = ", ".join(f"{name} ({schema.field(name).type})" for name in unkeepable)
        raise InputError(
            f"--keep_columns: {described} in {path} cannot be kept as text; keep columns "
            "of strings, numbers, booleans, dates or times"
        )


def count_inputs(path: str, limit: int, uri_column: str = "") -> int | None:
    """How many images path lists or matches, or None if more than limit (read no further);
    for a manifest, the rows its files' footers count; None for a listing of shards,
    whose images are counted only as they are read."""
    if lists_shards(path, uri_column):
        return None
    pattern = manifest_pattern(path)
    if pattern is not None:
        return count_manifest_rows(pattern, limit)
    if is_glob(path):
        matched = FileSystems.match([path], limits=[limit + 1])[0].metadata_list
        return len(matched) if len(matched) <= limit else None
    layout = sniff_layout(path, uri_column)
    rows = 0
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            fields = _loose_fields(raw.decode("utf-8", errors="replace"))
            if number > layout.skip_lines and (
                fields is None or any(field.strip() for field in fields)
            ):
                rows += 1
                if rows > limit:
                    return None
    return rows


def check_glob(pattern: str) -> None:
    if not FileSystems.match([pattern], limits=[1])[0].metadata_list:
        raise InputError(f"--input {pattern}: the pattern matches no files")


def first_uris(path: str, count: int, uri_column: str = "") -> tuple[str, ...]:
    """The input's first `count` distinct image URIs in input order, as the reader takes
    them, read only as far as needed (listed_uris); a shard's are its image members', in
    the shard's order.

    Runs in the launching process, which picks int8's calibration sample once for every
    worker (models/calibration.py).
    """
    uris: dict[str, None] = {}  # ordered, without repeats
    for listed in listed_uris(path, uri_column):
        for uri in _shard_image_uris(listed) if is_shard(listed) else (listed,):
            uris.setdefault(uri)
            if len(uris) >= count:
                return tuple(uris)
    return tuple(uris)


def _shard_image_uris(shard: str):
    """A listed shard's image URIs; none if it cannot be opened (the run says why)."""
    try:
        yield from image_uris(shard)
    except Exception:
        return


def lists_shards(path: str, uri_column: str = "") -> bool:
    """Whether the input is a listing of WebDataset shards: a glob of shard names, or a
    CSV or manifest whose first URI names a shard."""
    if is_glob(path) and manifest_pattern(path) is None:
        return path.lower().endswith(SHARD_SUFFIXES)
    first = next(iter(listed_uris(path, uri_column)), None)
    return first is not None and is_shard(first)


def listed_uris(path: str, uri_column: str = ""):
    """The URIs the input lists, in order, read as far as the caller takes them: for a
    CSV, the rows ParseRowFn yields a URI for (after the header; blank, unreadable and
    URI-less rows skipped); for a manifest, its files sorted and their rows in order
    (manifests.manifest_uris); for a glob, its matches sorted."""
    pattern = manifest_pattern(path)
    if pattern is not None:
        layout = manifest_layout(path, pattern, (), uri_column)
        yield from manifest_uris(layout)
        return
    if is_glob(path):
        matched = FileSystems.match([path])[0].metadata_list
        yield from sorted({m.path for m in matched if _is_utf8_name(m.path)})
        return
    layout = sniff_layout(path, uri_column)
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            if number <= layout.skip_lines:
                continue
            try:
                # The line without its ending, as ReadFromText gives it.
                fields = _loose_fields(raw.decode("utf-8").removesuffix("\n").removesuffix("\r"))
            except UnicodeDecodeError:
                continue
            if fields is None:
                continue
            fields = [field.strip() for field in fields]
            if layout.column < len(fields) and fields[layout.column]:
                yield fields[layout.column]


def _is_utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ParseRowFn(beam.DoFn):
    """One CSV line (bytes) to (uri, kept values); a non-blank row without a URI, not
    UTF-8 text or that the csv module cannot split is a read failure.

    Kept values are the fields exactly as the CSV holds them. With kept columns, a row
    whose fields do not line up with the header (a stray quote, an unquoted comma)
    is a read failure too: its values could not be told apart.
    """

    def __init__(self, layout: CsvLayout):
        self._column = layout.column
        self._kept = layout.kept
        self._width = len(layout.header)
        self._rows = counter("rows_read")

    def process(self, encoded: bytes):
        try:
            line = encoded.decode("utf-8")
        except UnicodeDecodeError as error:
            yield from self._not_utf8(encoded, error)
            return
        try:
            raw = _fields(line, strict=bool(self._kept))
        except csv.Error as error:
            raw, malformed = _loose_fields(line), f"not a well-formed CSV row ({error})"
            if raw is None:
                self._rows.inc()
                failure = Failure(_shown(line), "read", "MalformedRow", malformed)
                yield pvalue.TaggedOutput(FAILED, failure)
                return
        else:
            malformed = None
        if malformed is None and '"' in line and _quote_left_open(line):
            malformed = (
                "a quoted field runs past the end of the line: the input is read a line at a "
                "time, so a URI cannot hold a line break (list such files with a glob --input)"
            )
        fields = [field.strip() for field in raw]
        if not any(fields):  # blank lines and all-empty rows are not rows
            return
        self._rows.inc()
        uri = fields[self._column] if self._column < len(fields) else ""
        if self._kept and malformed is None and len(raw) != self._width:
            malformed = f"the row has {len(raw)} fields, the header {self._width}"
        if not uri:
            message = f"no URI in column {self._column}"
            yield pvalue.TaggedOutput(FAILED, Failure(line.strip(), "read", "MissingUri", message))
        elif malformed:
            failure = Failure(uri, "read", "MalformedRow", f"{malformed}: {line.strip()}")
            yield pvalue.TaggedOutput(FAILED, failure)
        else:
            yield uri, tuple(raw[index] for index in self._kept)

    def _not_utf8(self, encoded: bytes, error: UnicodeDecodeError):
        # The row is shown with its bad bytes escaped: its URI cannot be known for sure.
        self._rows.inc()
        shown = _shown(encoded.decode("utf-8", errors="backslashreplace"))
        message = f"the row is not UTF-8 text ({error.reason} at byte {error.start})"
        yield pvalue.TaggedOutput(FAILED, Failure(shown, "read", "UnicodeDecodeError", message))


class TakePathFn(beam.DoFn):
    """A matched file to a (path, ()) row; a local file name that is not UTF-8 is a read
    failure (no output could hold it, and Beam's coder would fail the job on it)."""

    def __init__(self):
        self._rows = counter("rows_read")

    def process(self, metadata):
        self._rows.inc()
        try:
            metadata.path.encode("utf-8")
        except UnicodeEncodeError as error:
            shown = metadata.path.encode("utf-8", errors="surrogateescape").decode(
                "utf-8", errors="backslashreplace"
            )
            message = f"the file name is not UTF-8 text (at character {error.start})"
            yield pvalue.TaggedOutput(FAILED, Failure(shown, "read", "UnicodeDecodeError", message))
        else:
            yield metadata.path, ()


class CountValuesFn(beam.CombineFn):
    """A URI's rows to how many times each tuple of kept values occurs."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, counts, values):
        counts[values] += 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts):
        return dict(counts)


class ChooseRowFn(beam.DoFn):
    """(uri, {kept values: rows}) to one (uri, values); the other rows are repeats, or,
    when their kept values differ, read failures that say which values were kept."""

    def __init__(self, keep_columns: tuple[str, ...]):
        self._keep_columns = keep_columns
        self._duplicates = counter("duplicates_dropped")

    def process(self, uri_and_counts: tuple[str, dict[tuple[str, ...], int]]):
        uri, counts = uri_and_counts
        chosen = min(counts)  # the same choice on every run, whatever the row order
        repeats = counts[chosen] - 1
        if repeats:
            self._duplicates.inc(repeats)
        yield pvalue.TaggedOutput(REPEATS, repeats)
        for values, rows in sorted(counts.items()):
            if values != chosen:
                message = (
                    f"listed again with other values of {', '.join(self._keep_columns)}: "
                    f"{list(values)}; the embedding keeps {list(chosen)}"
                )
                for _ in range(rows):
                    yield pvalue.TaggedOutput(
                        FAILED, Failure(uri, "read", "ConflictingDuplicate", message)
                    )
        yield uri, chosen


class SplitDoneFn(beam.DoFn):
    """(uri, {rows: [values], done: [...]}) to the row if it still needs embedding, else
    `skipped`."""

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
            yield uri, groups["rows"][0]


class ReadImageUris(beam.PTransform):
    """Reads (uri, kept values) rows, drops repeats, opens shards (and, given `done`, drops
    URIs embedded before).

    Outputs uris (the rows), failed, and the counts rows, duplicates and skipped (ints).
    CSV rule: if the first non-blank line names the URI column (uri_position) it is a
    header and that column holds the URIs; otherwise every row's first column does. A
    manifest's URI column is found by the same names in its schema. Only the keep_columns
    travel on; blank lines and whitespace around URIs are ignored.

    A row naming a WebDataset shard stands for the shard's image members (shards.py),
    read as decoding says (its byte limit per member, and whether local paths may be
    read); its rows carry the member's bytes on. In a listing of shards (lists_shards),
    keep_columns names the sibling members' extensions.
    """

    def __init__(
        self,
        input_path: str,
        done=None,
        keep_columns: tuple[str, ...] = (),
        uri_column: str = "",
        decoding: Decoding | None = None,
    ):
        super().__init__()
        self._input = input_path
        self._done = done
        self._keep_columns = tuple(keep_columns)
        self._uri_column = uri_column
        self._decoding = decoding

    def expand(self, pbegin):
        shards = lists_shards(self._input, self._uri_column)
        layout = keep_columns_layout(self._input, self._keep_columns, self._uri_column)
        rows, failed = self._read(pbegin, layout)
        # Grouping per URI drops repeats and also spreads the URIs over all workers (a
        # small CSV is read as a single split; a glob of shards is a row per shard).
        chosen = (
            rows
            | "Count values per URI" >> beam.CombinePerKey(CountValuesFn())
            | "Choose one row"
            >> beam.ParDo(ChooseRowFn(() if shards else self._keep_columns)).with_outputs(
                REPEATS, FAILED, main="rows"
            )
        )
        decoding = self._decoding
        opened = chosen.rows | "Open shards" >> OpenShards(
            self._keep_columns if shards else None,
            decoding.max_bytes if decoding else DEFAULT_MAX_IMAGE_BYTES,
            decoding.local_paths if decoding else True,
        )
        failed = (failed, chosen[FAILED], opened[FAILED]) | "Read failures" >> beam.Flatten()
        if self._done is None:
            pending = opened.rows
            skipped = pbegin | "Nothing skipped" >> beam.Create([])
        else:
            done = self._done | "Mark done" >> beam.Map(lambda uri: (uri, True))
            split = (
                {"rows": opened.rows, "done": done}
                | "Join with done" >> beam.CoGroupByKey()
                | "Drop done" >> beam.ParDo(SplitDoneFn()).with_outputs(SKIPPED, main="uris")
            )
            pending, skipped = split.uris, split[SKIPPED]
        listed = chosen[REPEATS] | "Rows of each URI" >> beam.Map(lambda repeats: repeats + 1)
        repeats = (chosen[REPEATS], opened[MEMBER_REPEATS]) | "Repeats" >> beam.Flatten()
        return {
            "uris": pending,
            "failed": failed,
            "rows": (
                (listed, opened[MEMBER_ROWS])
                | "Rows and members" >> beam.Flatten()
                | "Rows with a URI" >> beam.CombineGlobally(sum)
            ),
            "duplicates": repeats | "Duplicates" >> beam.CombineGlobally(sum),
            "skipped": skipped | "Skipped" >> beam.CombineGlobally(sum),
        }

    def _read(self, pbegin, layout: CsvLayout | ManifestLayout):
        """The input's (uri, kept values) rows, and its read failures."""
        if isinstance(layout, ManifestLayout):
            read = pbegin | "Read manifest" >> ReadManifestRows(layout)
        elif is_glob(self._input):
            read = (
                pbegin
                | "Match files" >> fileio.MatchFiles(self._input)
                | "Take paths" >> beam.ParDo(TakePathFn()).with_outputs(FAILED, main="rows")
            )
        else:
            # Bytes, decoded row by row: Beam's default coder would fail the whole job on
            # one byte that is not UTF-8.
            lines = pbegin | "Read lines" >> beam.io.ReadFromText(
                self._input, skip_header_lines=layout.skip_lines, coder=coders.BytesCoder()
            )
            read = lines | "Parse rows" >> beam.ParDo(ParseRowFn(layout)).with_outputs(
                FAILED, main="rows"
            )
        return read.rows, read[FAILED]
