"""Command line: python -m pipeline.search / search-images."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pipeline.console import exit_now, hidden_chatter
from pipeline.options import OneLineParser
from pipeline.search.query import embed_image, embed_text
from pipeline.search.recorded import SearchError, read_recorded
from pipeline.search.scan import Match, search_parquet, shard_paths


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


class _Parser(OneLineParser):
    # One line, as every other refusal of the command: no usage block.
    refusal = SearchError


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="search-images",
        description="The images of a pipeline output nearest a text or an image, embedded "
        "as the output's own run embedded its images (see docs/search.md).",
    )
    parser.add_argument("output", metavar="OUTPUT", help="a run's --output (local or gs://)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text, for a model with a text tower (CLIP, SigLIP 2)")
    query.add_argument("--image", metavar="URI", help="an image file (local or gs://)")
    parser.add_argument("--k", type=positive_int, default=10, help="results (default: 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--bigquery_table",
        metavar="PROJECT.DATASET.TABLE",
        help="search the table a run loaded, by BigQuery VECTOR_SEARCH, instead of the shards",
    )
    return parser


def escaped(value: str) -> str:
    """The value with each byte that is not UTF-8 shown as \\xNN."""
    try:
        # On POSIX, Python decodes such argv bytes to lone surrogates (surrogateescape).
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no byte decodes to
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def check_utf8(args: argparse.Namespace) -> None:
    """SearchError for an argument that is not UTF-8, before anything is read: a tokenizer
    cannot take such a text, and no run embeds an image or writes an output so named (a
    row that is not UTF-8 goes to its dead letter)."""
    named = (
        ("OUTPUT", args.output, "give the output's path in UTF-8"),
        ("--text", args.text, "give the text in UTF-8"),
        ("--image", args.image, "give the image's path in UTF-8 (rename the file)"),
        ("--bigquery_table", args.bigquery_table, "give the table's name in UTF-8"),
    )
    for name, value, instead in named:
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SearchError(f"{name} '{escaped(value)}' is not UTF-8: {instead}") from None


def search(args: argparse.Namespace) -> list[Match]:
    """The k matches the arguments ask for."""
    check_utf8(args)
    recorded = read_recorded(args.output)
    # Before any model loads, so that these are refused at once: an output without
    # shards, a table that cannot be read or holds other embeddings.
    if args.bigquery_table:
        from pipeline.search.bigquery import check_table, search_bigquery

        table = check_table(recorded, args.bigquery_table)
    else:
        paths = shard_paths(recorded)
    if args.text is not None:
        query = embed_text(recorded, args.text)
    else:
        query = embed_image(recorded, args.image)
    if args.bigquery_table:
        return search_bigquery(recorded, table, query, args.k)
    return search_parquet(recorded, query, args.k, paths)


def as_json(rank: int, match: Match) -> str:
    record = {**match.columns, "rank": rank, "uri": match.uri, "similarity": match.similarity}
    return json.dumps(record, ensure_ascii=False)


def as_table(matches: list[Match]) -> str:
    """rank, similarity, URI and the kept columns, aligned."""
    names = list(matches[0].columns) if matches else []
    header = ["rank", "similarity", "uri", *names]
    rows = [
        [str(rank), f"{match.similarity:.4f}", match.uri, *(str(match.columns[n]) for n in names)]
        for rank, match in enumerate(matches, 1)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {0, 1}  # numbers align right
    lines = [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the results; exit 0, or 2 with one line saying why the search cannot run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    try:
        args = build_parser().parse_args(argv)
        with hidden_chatter():
            matches = search(args)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        for rank, match in enumerate(matches, 1):
            print(as_json(rank, match))
    else:
        print(as_table(matches))
    return 0


def entry() -> None:
    """The search-images command: main, then exit at once (console.exiting)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
