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


# Readers see no session and no issue tracker: a figure names its date and CPU instead. Third-party
# references (onnxruntime's InferenceSession, "Lightning #2727") are not genflow's words.
UNSEEN = re.compile(r"\b(?:this|an? earlier|the previous|that) session\b|\bthis machine\b|\bsessions?\b(?! ?\()"
                    r"|\bissues? ?#?\d+\b", re.IGNORECASE)


def test_no_prose_speaks_of_sessions_machines_or_issue_numbers() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
             for path in markdown_files()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if UNSEEN.search(line.replace("InferenceSession", ""))]
    assert not found, "say the date and the CPU instead:\n" + "\n".join(found)


def test_the_readme_is_a_guide() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference and results into docs/"
    assert any("make demo" in line for line in lines) and any("make test" in line for line in lines)
