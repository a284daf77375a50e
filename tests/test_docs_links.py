"""Every relative link in README.md and docs/**/*.md points at a file or folder that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target); the target ends at the first space (a "title") or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ...
FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target without #anchor) of every relative link outside code blocks."""
    links, in_code = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = match.group(1)
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            target = target.split("#", 1)[0]
            if target:
                links.append((number, target))
    return links


def test_every_relative_link_exists() -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{number}: {target}"
        for path in markdown_files()
        for number, target in relative_links(path)
        if not (path.parent / target).exists()
    ]
    assert not broken, "broken links:\n" + "\n".join(broken)
