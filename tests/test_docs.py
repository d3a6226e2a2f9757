"""The README and docs/ pages: every relative link and #anchor resolves, the README stays short."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def documentation() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, numbered from 1."""
    lines, in_code = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append((number, line))
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text, before duplicates are numbered."""
    text = LINK_TEXT.sub(r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated one gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        heading = HEADING.match(line)
        if not heading:
            continue
        base = anchor(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(pages: list[Path]) -> list[str]:
    """One line for each relative link, or #anchor, in the pages that leads nowhere."""
    broken = []
    for page in pages:
        for number, line in prose_lines(page):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
                    continue  # http(s), mailto: not checked here
                where, _, fragment = target.partition("#")
                destination = (page.parent / where).resolve() if where else page
                place = f"{page.name}:{number}: {target}"
                if not destination.exists():
                    broken.append(f"{place}: no file {where}")
                    continue
                headed = destination.suffix != ".md" or fragment in anchors(destination)
                if fragment and not headed:
                    broken.append(f"{place}: no heading #{fragment} in {destination.name}")
    return broken


def test_every_relative_link_and_anchor_in_the_documentation_resolves():
    assert broken_links(documentation()) == []


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The map branch's memory\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n"
        "[fine](other.md#the-map-branchs-memory), [fine too](#a-page), [web](https://x.invalid/y)\n"
        "[gone](missing.md) and [no heading](other.md#memory)\n"
        "![picture](missing.png)\n"
        "`[in code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n"
        "[nowhere on this page](#nowhere)\n"
    )
    assert broken_links([page]) == [
        "page.md:4: missing.md: no file missing.md",
        "page.md:4: other.md#memory: no heading #memory in other.md",
        "page.md:5: missing.png: no file missing.png",
        "page.md:10: #nowhere: no heading #nowhere in page.md",
    ]


def test_anchors_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Publishing: a run replaces the output only once it has passed\n"
        "## The map branch's memory\n"
        "## `--map` and `--neighbors`\n"
        "## Notes\n## Notes\n### Notes\n"
        "## Dataflow, directly ##\n"
        "## See [the README](../README.md)\n"
        "```\n# not a heading\n```\n"
    )
    assert anchors(page) == {
        "publishing-a-run-replaces-the-output-only-once-it-has-passed",
        "the-map-branchs-memory",
        "--map-and---neighbors",
        "notes",
        "notes-1",
        "notes-2",
        "dataflow-directly",
        "see-the-readme",
    }


def test_every_docs_page_has_a_title_links_back_and_is_in_the_readmes_map():
    readme = README.read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# "), page.name
        assert "](../README.md" in text, page.name
        assert f"- [docs/{page.name}](docs/{page.name}): " in readme, page.name


def test_the_readme_is_at_most_300_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


# The data path's optional branches, by the flags that ask for them: the label step
# (job.build_pipeline) and each optional output (plan.optional_outputs).
BRANCHES = {
    "--zero_shot_labels",
    "--score_head",
    "--neighbors",
    "--duplicate_threshold",
    "--compare_with",
    "--vector_search_output",
    "--map",
    "--bigquery_table",
}


def readme_picture() -> str:
    """The README's data-path picture: its first fenced block."""
    return re.findall(r"^```\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)[0]


def test_the_readme_picture_shows_every_branch_and_publish_after_the_verdict():
    picture = readme_picture()
    steps = [line.split()[0].rstrip(":") for line in picture.splitlines() if line[:1].isalpha()]
    assert steps == ["read", "load", "extract", "store", "summary", "verdict", "publish"]
    marked = re.findall(r"\[(--[^\]]+)\]", picture)
    shown = {flag for flags in marked for flag in flags.split(", ")}
    assert shown == BRANCHES
    declared = re.findall(r"^\| `(--\w+)` \|", (DOCS / "options.md").read_text(), re.M)
    assert set(declared) >= BRANCHES
