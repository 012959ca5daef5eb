#!/usr/bin/env python3
"""Checks that every relative link in the README, CONTRIBUTING.md and docs/*.md resolves: the file (or
folder) exists, and an anchor (#...) into a Markdown file names one of its headings, by GitHub's rule
(lower case; punctuation removed; spaces become hyphens). Links inside fenced code blocks and inline
code are not links. Exits 1 and names each broken link (file:line: target) otherwise.

  python3 tests/docs/check_links.py <repository root>
"""
import functools
import os
import re
import sys
import unicodedata

LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks, inline code removed."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                yield number, re.sub(r"`[^`]*`", "``", line)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation and symbols removed, spaces to hyphens."""
    text = heading.strip().lower()
    kept = []
    for ch in text:
        if ch in " -_":
            kept.append("-" if ch == " " else ch)
        elif unicodedata.category(ch)[0] in "LNM":
            kept.append(ch)
    return "".join(kept)


@functools.lru_cache(maxsize=None)
def anchors(path):
    """The heading anchors of a Markdown file (read once per file, however many links point into it)."""
    found, counts = set(), {}
    fenced = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            m = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
            if m:
                s = slug(m.group(1))
                n = counts.get(s, 0)
                found.add(s if n == 0 else f"{s}-{n}")  # GitHub numbers repeated headings
                counts[s] = n + 1
    return frozenset(found)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = [os.path.join(root, n) for n in ("README.md", "CONTRIBUTING.md")]
    docs = os.path.join(root, "docs")
    files += sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))
    broken, checked = [], 0
    for path in files:
        if not os.path.exists(path):
            continue
        for number, line in prose_lines(path):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                checked += 1
                file_part, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
                where = f"{os.path.relpath(path, root)}:{number}: {target}"
                if not os.path.exists(dest):
                    broken.append(f"{where} (no such file: {os.path.relpath(dest, root)})")
                elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                    broken.append(f"{where} (no heading with the anchor #{anchor} in {os.path.relpath(dest, root)})")
    for b in broken:
        print("broken link:", b)
    print(f"check_links: {checked} relative links in {len(files)} files, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
