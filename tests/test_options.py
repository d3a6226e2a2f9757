"""Flags: one declaration, unknown flags rejected, values validated, --help complete."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest
from support import REPO, pipeline_flags, run_cli

from pipeline.options import (
    EmbeddingOptions,
    UsageError,
    parse_bool,
    parse_options,
    print_beam_help,
    print_help,
)
from pipeline.options.describe import form_help, options_page, template_metadata
from pipeline.options.flags import GROUPS, OPTIONS, POSITIVE, Limits, Option
from pipeline.run.preflight import check_output

REQUIRED = ["--input", "images.csv", "--output", "out"]


def test_beam_options_pass_through_unchanged():
    options = parse_options(
        [*REQUIRED, "--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
         "--temp_location", "gs://b/tmp", "--max_num_workers", "7"]
    )  # fmt: skip
    everything = options.get_all_options()
    assert everything["runner"] == "DataflowRunner"
    assert everything["project"] == "p"
    assert everything["region"] == "europe-west1"
    assert everything["max_num_workers"] == 7
    assert everything["input"] == "images.csv"


@pytest.mark.parametrize(
    "flag", ["--maxNumWorkers=5", "--max_num_worker=5", "--ouput=x", "--out=x"]
)
def test_unknown_or_abbreviated_flags_are_errors_that_name_them(flag):
    with pytest.raises(UsageError, match=flag.split("=")[0]):
        parse_options([*REQUIRED, flag])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "out"], "--input is required"),
        (["--input", "x.csv"], "--output is required"),
        ([*REQUIRED, "--pooling", "mean"], "--pooling: 'mean' is not one of avg, max, none"),
        ([*REQUIRED, "--output_format", "csv"], "--output_format"),
        ([*REQUIRED, "--model", "vgg16"], "--model"),
        ([*REQUIRED, "--resize", "fit"], "--resize"),
        ([*REQUIRED, "--min_batch_size", "64"], "--min_batch_size <= --max_batch_size"),
        ([*REQUIRED, "--max_failure_fraction", "1.5"], "between 0 and 1"),
        ([*REQUIRED, "--num_shards", "-1"], "--num_shards"),
        ([*REQUIRED, "--map", "--pooling", "none"], "--map needs pooled embeddings"),
        ([*REQUIRED, "--map_sample_size", "0"], "--map_sample_size must be at least 1"),
        ([*REQUIRED, "--break_lease", "latest"], "--break_lease 'latest' is not a run id"),
        ([*REQUIRED, "--lease_stale_after_hours", "0"], "--lease_stale_after_hours must be"),
        # The refusals each flag's declaration makes, word for word.
        ([*REQUIRED, "--max_image_pixels", "0"], "^--max_image_pixels must be positive, got 0$"),
        ([*REQUIRED, "--max_image_bytes", "-5"], "^--max_image_bytes must be positive, got -5$"),
        (
            [*REQUIRED, "--num_shards", "-1"],
            "^--num_shards must be 0 (runner decides) or more, got -1$",
        ),
        (
            [*REQUIRED, "--max_failure_fraction", "nan"],
            "^--max_failure_fraction must be between 0 and 1, got nan$",
        ),
        (
            [*REQUIRED, "--lease_stale_after_hours", "-0.5"],
            "^--lease_stale_after_hours must be positive, got -0.5$",
        ),
        # A missing required flag is named before any other flag's refusal.
        (["--input", "x.csv", "--resize", "fit"], "^--output is required: a directory or"),
    ],
)
def test_invalid_values_are_explained(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options(args)


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        (Limits(0, 100, low_means="none"), "between 0 (none) and 100"),
        (
            Limits(0, 1, low_means="none", high_means="a cosine similarity"),
            "between 0 (none) and 1 (a cosine similarity)",
        ),
        (Limits(2), "at least 2"),
        (Limits(0, low_means="runner decides"), "0 (runner decides) or more"),
        (POSITIVE, "positive"),
    ],
)
def test_limits_say_the_range_they_hold(limits, said):
    assert limits.described() == said
    low = limits.low
    assert limits.holds(low) is not limits.positive
    assert not limits.holds(low - 1)
    if limits.high is not None:
        assert limits.holds(limits.high) and not limits.holds(limits.high + 0.5)


def candidates(option: Option) -> list[str]:
    """Values on both sides of each end of the flag's range, as the form would send them."""
    limits = option.limits
    assert limits is not None
    ends = [limits.low] if limits.high is None else [limits.low, limits.high]
    steps = (-1, 0, 1) if option.type is int else (-1, -0.5, 0, 0.5, 1)
    return [str(end + step) for end in ends for step in steps]


def test_the_forms_regexes_take_exactly_the_numbers_each_flag_takes():
    """The Console checks a value with its regexes before the launch; the pipeline with
    the flag's declared limits. A value one takes, the other must take too."""
    parameters = {p["name"]: p for p in template_metadata()["parameters"]}
    limited = [option for option in OPTIONS if option.limits]
    assert len(limited) >= 9
    for option in limited:
        regexes = [re.compile(r) for r in parameters[option.name]["regexes"]]
        for value in candidates(option):
            on_the_form = all(r.fullmatch(value) for r in regexes)
            refusal = option.refusal(option.type(value))
            assert on_the_form is (refusal is None), (option.flag, value, refusal)


def test_each_flags_text_names_every_choice():
    for option in OPTIONS:
        for choice in option.choices:
            assert f"`{choice}`" in option.help, (option.flag, choice)


def test_the_form_names_parameters_as_the_form_sets_them():
    text = "Seed for `--weights random` and `--map`; `gs://` paths, `{}` for the label."
    assert form_help(text, "0") == (
        "Seed for weights=random and map; gs:// paths, {} for the label. For example, 0"
    )


def test_booleans_take_the_spellings_templates_and_shells_use():
    assert [parse_bool(v) for v in ("true", "True", "1", "yes")] == [True] * 4
    assert [parse_bool(v) for v in ("false", "FALSE", "0", "no")] == [False] * 4
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")
    opts = parse_options([*REQUIRED, "--jpeg_draft", "false"]).view_as(EmbeddingOptions)
    assert opts.jpeg_draft is False
    assert parse_options([*REQUIRED, "--jpeg_draft"]).view_as(EmbeddingOptions).jpeg_draft is True


@pytest.fixture(scope="module")
def help_text() -> str:
    """python -m pipeline --help, as a user runs it (once for the tests that read it): a
    fresh interpreter, 1.4 s, where a preloaded one would take the fast tier 4.5 s."""
    result = run_cli("--help", as_user=True)
    assert result.returncode == 0
    return result.stdout


def test_help_lists_every_option_with_its_default(help_text):
    text = " ".join(help_text.split())
    for flag, action in pipeline_flags().items():
        assert flag in text
        if action.default is not None:
            shown = "none" if action.default == "" else action.default
            assert f"(default: {shown})" in text, flag
    # Beam's options are listed by --help-beam, which the last line names.
    assert help_text.splitlines()[-1].endswith("python -m pipeline --help-beam")


def test_cli_rejects_a_misspelled_flag_before_doing_any_work(tmp_path, capsys):
    # In this process; test_the_misspelt_command_is_one_line_as_a_user_runs_it runs a
    # fresh interpreter.
    args = ("--input", "x.csv", "--output", str(tmp_path / "o"), "--max_num_worker", "3")
    code, out, err = cli_here(capsys, *args)
    assert (code, out) == (2, "")
    [line] = [line for line in err.splitlines() if line.strip()]
    assert "unrecognised argument(s): --max_num_worker (did you mean --max_num_workers?)" in line
    assert not (tmp_path / "o").exists()


def cli_here(capsys, *args: str) -> tuple[int, str, str]:
    """The command line's main() in this process: exit status, standard output and error."""
    from pipeline.cli import main

    capsys.readouterr()
    code = main(list(args))
    printed = capsys.readouterr()
    return code, printed.out, printed.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        pytest.param(["--modle", "resnet50"], "--modle (did you mean --model?)", id="unknown"),
        pytest.param(["--neigbors", "5"], "--neigbors (did you mean --neighbors?)", id="unknown2"),
        pytest.param(["--runer", "x"], "--runer (did you mean --runner?)", id="unknown-beam"),
        pytest.param(
            ["--maxNumWorkers=5"], "(did you mean --max_num_workers?)", id="unknown-spelling"
        ),
        pytest.param(["--out=x"], "--out=x (did you mean --output?)", id="abbreviated"),
        pytest.param(["photos.csv"], "unrecognised argument(s): photos.csv (see", id="stray"),
        pytest.param(["--neighbors", "ten"], "--neighbors: invalid int value: 'ten'", id="int"),
        pytest.param(
            ["--max_num_workers", "x"], "--max_num_workers: invalid int value", id="int-beam"
        ),
        pytest.param(["--model"], "argument --model: expected one argument", id="no-value"),
        pytest.param(
            ["--jpeg_draft", "maybe"], "expected true or false, got 'maybe'", id="boolean"
        ),
        pytest.param(
            ["--pooling", "mx"],
            "--pooling: 'mx' is not one of avg, max, none; did you mean max?",
            id="choice",
        ),
        pytest.param(
            ["--flexrs_goal", "COST_OPTIMISED"], "; did you mean COST_OPTIMIZED?", id="choice-beam"
        ),
        pytest.param(["--model", "resnet5"], "; did you mean resnet50?", id="model"),
        pytest.param(
            ["--model", "CLIP-ViT-base-patch16"], "did you mean clip_vit_base_patch16?", id="model2"
        ),
        pytest.param(["--engine", "openvno"], "; did you mean openvino?", id="engine"),
        pytest.param(["--precision", "bfloat"], "; did you mean bfloat16?", id="precision"),
        pytest.param(["--resize", "center-crop"], "; did you mean center_crop?", id="resize"),
        pytest.param(["--output_format", "parquett"], "; did you mean parquet?", id="format"),
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(args, said, tmp_path, capsys):
    """argparse's refusals as our own: one `error:` line, no usage block, with the flag or
    value a misspelt one most likely meant."""
    output = tmp_path / "out"
    code, out, err = cli_here(capsys, "--input", "x.csv", "--output", str(output), *args)
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("error: ") and said in line, line
    assert not output.exists()


def test_a_value_near_no_choice_suggests_none():
    with pytest.raises(UsageError) as refused:
        parse_options([*REQUIRED, "--pooling", "mean"])
    assert "did you mean" not in str(refused.value)


@pytest.mark.slow  # a fresh interpreter (the fast tier starts none)
def test_the_misspelt_command_is_one_line_as_a_user_runs_it():
    result = run_cli("--modle", "x", as_user=True)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "error: unrecognised argument(s): --modle (did you mean --model?) "
        "(see python -m pipeline --help)"
    ]


def printed(printer) -> str:
    buffer = io.StringIO()
    printer(buffer)
    return buffer.getvalue()


def listed_flags(text: str) -> set[str]:
    return set(re.findall(r"^  (--\w+)", text, flags=re.MULTILINE))


def test_help_shows_the_pipelines_own_flags_by_group_and_where_beams_are(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    text = printed(print_help)
    lines = text.splitlines()
    for group in GROUPS:
        assert f"{group.title}:" in lines
    assert listed_flags(text) == set(pipeline_flags())
    # Beam's own help is some 690 lines: the pipeline's groups alone are about a third.
    assert len(lines) < 400
    assert lines[-1] == "List them with: python -m pipeline --help-beam"


def test_help_beam_lists_beams_options_and_none_of_the_pipelines():
    flags = listed_flags(printed(print_beam_help))
    assert {"--runner", "--project", "--region", "--temp_location", "--max_num_workers"} <= flags
    assert not flags & set(pipeline_flags())


@pytest.mark.parametrize(
    ("flag", "printer"), [("--help", print_help), ("--help-beam", print_beam_help)]
)
def test_the_command_prints_each_help(flag, printer, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli_here(capsys, flag) == (0, printed(printer), "")


def parser_groups() -> dict[str, list[str]]:
    """Argument group title -> its flags, as EmbeddingOptions adds them to a parser."""
    parser = argparse.ArgumentParser(add_help=False)
    EmbeddingOptions._add_argparse_args(parser)
    return {
        group.title: [action.option_strings[0] for action in group._group_actions]
        for group in parser._action_groups
        if group._group_actions
    }


def sections(text: str, heading: str) -> dict[str, str]:
    """Title -> body of each section, from lines matching heading (its one group: the title)."""
    found = list(re.finditer(heading, text, flags=re.MULTILINE))
    ends = [match.start() for match in found[1:]] + [len(text)]
    return {match.group(1): text[match.end() : end] for match, end in zip(found, ends, strict=True)}


def test_options_page_tables_match_the_flags_group_by_group():
    page = (REPO / "docs" / "options.md").read_text()
    flags = pipeline_flags()
    row = r"^\| `(--\w+)` \| `?([^`|]+?)`? \|"
    rows = dict(re.findall(row, page, flags=re.MULTILINE))
    assert set(rows) == set(flags)
    for flag, action in flags.items():
        expected = "required" if action.default is None else action.default
        if expected == "":
            expected = "none"
        if isinstance(expected, bool):
            expected = str(expected).lower()
        assert rows[flag] == str(expected), flag
    by_heading = sections(page, r"^## (.+)$")
    for title, group_flags in parser_groups().items():
        assert re.findall(row, by_heading[title], flags=re.MULTILINE) == [
            (flag, rows[flag]) for flag in group_flags
        ], title


def test_options_page_is_what_the_declarations_write():
    assert (REPO / "docs" / "options.md").read_text() == options_page()


def test_readme_options_section_points_to_the_options_page():
    readme = (REPO / "README.md").read_text()
    [section] = re.findall(r"^## Options\n(.*?)^## ", readme, flags=re.MULTILINE | re.DOTALL)
    assert "(docs/options.md)" in section
    assert "| `--" not in section, "the options table lives in docs/options.md only"


def listed(text: str, before: str) -> list[str]:
    """The comma-separated list in parentheses right after `before` in text."""
    [items] = re.findall(re.escape(before) + r"\s+\(([^)]*)\)", text)
    return [" ".join(item.split()) for item in items.split(",")]


def test_readme_lists_the_option_groups_flags_py_declares():
    readme = (REPO / "README.md").read_text()
    named = listed(readme, "Every option, grouped by feature")
    assert named == [group.title.lower() for group in GROUPS]


def test_readme_lists_the_console_forms_groups_as_metadata_json_orders_them():
    readme = (REPO / "README.md").read_text()
    named = listed(readme, "The form groups the parameters")
    metadata = json.loads((REPO / "metadata.json").read_text())
    groups = [parameter["groupName"] for parameter in metadata["parameters"]]
    assert named == list(dict.fromkeys(groups))


def test_help_shows_each_group_with_its_flags_and_their_help(help_text):
    by_title = sections(help_text, r"^(\S.*):$")
    for group in GROUPS:
        body = by_title[group.title]
        assert re.findall(r"^  (--\w+)", body, flags=re.MULTILINE) == [
            option.flag for option in group.options
        ], group.title
        # argparse wraps lines after a hyphen too ("keras-" then "hub").
        text = " ".join(body.split()).replace("- ", "-")
        assert " ".join(group.description.split()) in text
        for option in group.options:
            assert " ".join(option.plain.split()) in text, option.flag


@pytest.mark.parametrize(
    ("output", "reason"),
    [("/proc/forbidden", "No such file or directory"), ("{file}/below", "Not a directory")],
)
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(
    output, reason, tmp_path, capsys
):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    output = output.format(file=a_file)
    args = ("--input", "tests/data/photos.csv", "--output", output, "--weights", "random")
    code, _, err = cli_here(capsys, *args)
    assert code == 2
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"error: --output {output}: cannot write there (")
    assert reason in line


def test_a_writable_output_is_created_and_no_probe_is_left(tmp_path):
    output = tmp_path / "new" / "out"
    check_output(str(output))
    assert output.is_dir() and list(output.iterdir()) == []


@pytest.mark.parametrize("value", ["out\udce9", "caf\udce9.csv"])
def test_an_argument_that_is_not_utf8_is_refused_naming_its_bytes(value, tmp_path):
    """POSIX hands argv bytes that are not UTF-8 over as lone surrogates; Beam's display
    data and every output file would fail on them later."""
    with pytest.raises(UsageError, match=r"\\xe9[^']*' is not UTF-8"):
        parse_options(["--input", "x.csv", "--output", str(tmp_path / value)])
