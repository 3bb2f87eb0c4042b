"""The project's prose: README.md and the site's pages (docs/), for tests that check what they say.

`text()` is all of it; `section(title)` the part under a heading, wherever it moved: a page whose title
(`# Title`) it is gives the whole page, a `## Title` the text up to the next `## `. `blocks()` lists every
fenced code block with what precedes it (a `<!-- not run: reason -->` or `<!-- run by: test -->` mark).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import ROOT

DOCS = ROOT / "docs"
MARK = re.compile(r"<!--\s*(not run|run by):\s*(.*?)\s*-->\s*$")


def files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def text() -> str:
    return "\n".join(path.read_text() for path in files())


def section(title: str) -> str:
    for path in files():
        page = path.read_text()
        if page.startswith(f"# {title}\n"):
            return page.split("\n", 1)[1]
        if f"\n## {title}\n" in page:
            return page.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    raise AssertionError(f"no page or section titled {title!r} in README.md or docs/")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    mark: str | None  # "not run" or "run by", from the comment line just before the fence
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in files():
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = re.match(r"^(\s*)```(\S*)", lines[index])
            if not opening:
                index += 1
                continue
            indent, language = opening.groups()
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            code = "\n".join(line[len(indent):] for line in lines[index + 1:end]) + "\n"
            before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            mark = MARK.search(before.strip())
            found.append(Block(path, index + 1, language, code, mark and mark[1], mark[2] if mark else ""))
            index = end + 1
    return found
