"""metadata.json and docs/options.md, written from the flags' declarations.

python -m pipeline.options.describe          # rewrite both files (make metadata)
python -m pipeline.options.describe --check  # exit 1 if either differs from its declarations
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.options.flags import BEAM_FORM_FIELDS, GROUPS, OPTIONS, BeamField, Form, Option

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "metadata.json"
OPTIONS_PAGE = REPO / "docs" / "options.md"

TEMPLATE_NAME = "Image embeddings"
TEMPLATE_DESCRIPTION = (
    "Embeds images listed in a CSV (or matched by a glob) in Cloud Storage with a Keras "
    "model (ResNet50 by default) and writes the embeddings, a dead letter of failed inputs, "
    "and a summary to Cloud Storage."
)

_PAGE_INTRO = """\
# Options

<!-- Written by `make metadata` from pipeline/options/flags.py: edit the declarations
there, not this file. -->

Back to the [README](../README.md).

Every option has the same name as the Flex Template parameter it will become.
`python -m pipeline --help` prints these groups of options, and
`python -m pipeline --help-beam` every Apache Beam pipeline option (`--runner`,
`--project`, `--region`, `--temp_location`, `--max_num_workers`, ...), which pass
to the runner unchanged. An unknown or misspelled flag is an error that names it
and the flag it most likely meant (Beam itself would silently drop it), and flags
cannot be abbreviated.
"""

_PAGE_END = """\
Booleans accept `true/false`, `1/0` and `yes/no`; `--jpeg_draft` alone means true.
"""

# A code span of a flag's one text, and a flag (with a value) inside one.
_CODE = re.compile(r"`([^`]*)`")
_FLAG = re.compile(r"--(\w+)(?: (.+))?")


def _form_default(option: Option) -> str:
    """The default as the form shows it (booleans as true/false)."""
    return str(option.default).lower() if option.boolean else str(option.default)


def _param_type(option: Option) -> str:
    if option.form.type:
        return option.form.type
    if option.choices:
        return "ENUM"
    if option.boolean:
        return "BOOLEAN"
    if option.type in (int, float):
        return "NUMBER"
    return "TEXT"


def _enum_options(option: Option) -> list[dict]:
    if set(option.form.enum) != set(option.choices):
        raise ValueError(f"{option.flag}: the form's enum labels must name exactly its choices")
    enum = option.form.enum
    return [
        {"value": value, "label": enum[value][0], "description": enum[value][1]}
        for value in option.choices
    ]


def _as_set_on_the_form(code: re.Match[str]) -> str:
    """A code span as the form shows it: `--flag value` as flag=value, `--flag` as flag."""
    flag = _FLAG.fullmatch(code.group(1))
    if not flag:
        return code.group(1)
    name, value = flag.groups()
    return f"{name}={value}" if value else name


def form_help(text: str, example: str) -> str:
    """A parameter's help text on the form: its one text, the parameters named as the form
    names them, then the example (the tests launch with it)."""
    return f"{_CODE.sub(_as_set_on_the_form, text)} For example, {example}"


def _field(name: str, help_text: str, form: Form, param_type: str) -> dict:
    return {
        "name": name,
        "label": form.label,
        "helpText": form_help(help_text, form.example),
        "groupName": form.group,
        "paramType": param_type,
    }


def _parameter(option: Option) -> dict:
    parameter = _field(option.name, option.help, option.form, _param_type(option))
    if option.default is not None:  # no default: the launch must give it
        parameter["isOptional"] = True
    if option.default not in (None, ""):  # "": unset unless the launch gives it
        parameter["defaultValue"] = _form_default(option)
    if option.choices:
        parameter["enumOptions"] = _enum_options(option)
    regexes = ("^(true|false)$",) if option.boolean else option.form.regexes
    if regexes:
        parameter["regexes"] = list(regexes)
    return parameter


def _beam_parameter(name: str, field: BeamField) -> dict:
    form = field.form
    parameter = {**_field(name, field.help, form, form.type), "isOptional": True}
    if form.regexes:
        parameter["regexes"] = list(form.regexes)
    return parameter


def template_metadata() -> dict:
    """The Flex Template's metadata: a parameter per flag, then Beam's flags on the form."""
    parameters = [_parameter(option) for option in OPTIONS]
    parameters += [_beam_parameter(name, field) for name, field in BEAM_FORM_FIELDS.items()]
    return {"name": TEMPLATE_NAME, "description": TEMPLATE_DESCRIPTION, "parameters": parameters}


def metadata_text() -> str:
    """metadata.json as committed."""
    return json.dumps(template_metadata(), indent=2, ensure_ascii=False) + "\n"


def _shown_default(option: Option) -> str:
    if option.default is None:
        return "required"
    if option.default == "":
        return "none"
    return f"`{_form_default(option)}`"


def _meaning(option: Option) -> str:
    """A flag's docs/options.md cell: its one text, and a link to where the docs say more."""
    text = option.help.replace("|", r"\|")
    return f"{text} See [{option.see.title}]({option.see.target})." if option.see else text


def options_page() -> str:
    """docs/options.md: a table per group of flags."""
    sections = [_PAGE_INTRO]
    for group in GROUPS:
        rows = [f"| `{o.flag}` | {_shown_default(o)} | {_meaning(o)} |" for o in group.options]
        table = "\n".join(["| option | default | meaning |", "|---|---|---|", *rows])
        sections.append(f"## {group.title}\n\n{group.description}\n\n{table}\n")
    sections.append(_PAGE_END)
    return "\n".join(sections)


GENERATED = {METADATA: metadata_text, OPTIONS_PAGE: options_page}


def main(argv: Sequence[str] | None = None) -> int:
    """Writes (or, with --check, compares) every file generated from the declarations."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.options.describe", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in GENERATED.items():
        expected = text()
        if path.exists() and path.read_text() == expected:
            continue
        if args.check:
            stale.append(path.relative_to(REPO))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        names = ", ".join(map(str, stale))
        print(
            f"{names}: not what pipeline/options/flags.py declares; run make metadata",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
