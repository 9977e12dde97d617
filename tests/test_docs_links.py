"""Every relative link in README.md and docs/ resolves: the file exists, and a `#fragment` names a heading there.

The docs cite measured data by path and cross-reference sections by anchor; a renamed file or heading would
otherwise leave a dead link that nothing notices. Anchors follow GitHub's heading slugs.
"""

import functools
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), and an image's ![alt](target) alike
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their 1-based numbers."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache  # a page is linked to many times; parse its headings once
def anchors(page: Path) -> frozenset[str]:
    """Every heading anchor of a markdown page, repeated headings numbered as GitHub numbers them."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return frozenset(found)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """`file:line: target (why)` for each relative link of the page that does not resolve."""
    problems = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto: are outside the repository
            path_part, _, fragment = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: {target}"
            resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
            if not resolved.exists():
                problems.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and unquote(fragment) not in anchors(resolved):
                problems.append(f"{where} (no heading with that anchor)")
    return problems


def test_github_slug_matches_githubs_rules():
    assert github_slug("22. Flow-GRPO at five times its budget (item 7's performance target)") == (
        "22-flow-grpo-at-five-times-its-budget-item-7s-performance-target"
    )
    assert github_slug("LoRA: PEFT's layers against merged weights (2026-12-06, AMX Xeon, idle cores)") == (
        "lora-pefts-layers-against-merged-weights-2026-12-06-amx-xeon-idle-cores"
    )
    assert github_slug("`vgpo demo` and its [report](x.md)") == "vgpo-demo-and-its-report"


def test_repeated_headings_are_numbered(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Data\n\n## Data\n\n```\n# not a heading\n```\n\n### Data\n", encoding="utf-8")
    assert anchors(page) == {"data", "data-1", "data-2"}


def test_a_dead_link_is_reported_with_its_line(tmp_path):
    (tmp_path / "b.md").write_text("# Here\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#here)\n[gone](c.md)\n[bad anchor](b.md#there)\n`[code](d.md)`\n", encoding="utf-8")
    assert broken_links(page, root=tmp_path) == [
        "a.md:2: c.md (no such file)",
        "a.md:3: b.md#there (no heading with that anchor)",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []
