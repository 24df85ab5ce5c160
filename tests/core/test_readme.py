"""The README stays a short user document, its links and the guide's resolve, and neither narrates the development:
at most 250 lines; every relative link and image in README.md, docs/**/*.md and custom/*/README.md points to an
existing file; no issue numbers or work-log phrases (nor issue numbers in code, recipes and scripts); CI's test command is where `.ci/run` looks for it."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_README_LINES = 250

# work-log phrases and issue references; matched case-insensitively
NARRATION = [
    r"issue\s*#", r"\bissue \d+\b", r"(?<![\w&])#\d{1,2}\b", r"before the fix", r"after the fix", r"the issue's",
    r"our issue", r"the issue\b", r"\bearlier (session|run|version|measurement)s?\b",
    r"\blater (session|run of the work)\b", r"\bthis session\b", r"\bpreviously\b", r"\bused to\b",
    r"\bsince the figures above\b", r"\bthe session after\b", r"\bnot yet resolved\b",
]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _docs():
    files = [os.path.join(REPO, "README.md")]
    files += sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
    files += sorted(glob.glob(os.path.join(REPO, "custom", "*", "README.md")))
    return files


def _rel(path):
    return os.path.relpath(path, REPO)


def _links(text):
    text = _FENCE.sub("", text)  # links inside code blocks are examples, not links
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, in-page anchors
        yield target.split("#", 1)[0]


def test_readme_is_short():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move reference to docs/"


@pytest.mark.parametrize("path", _docs(), ids=_rel)
def test_relative_links_resolve(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    missing = [t for t in _links(text) if t and not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert not missing, f"{_rel(path)} links to missing files: {missing}"


@pytest.mark.parametrize("path", _docs(), ids=_rel)
def test_no_development_narration(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    hits = [f"{_rel(path)}:{i}: {line.strip()}" for i, line in enumerate(lines, 1)
            for pat in NARRATION if re.search(pat, line, re.I)]
    assert not hits, "state current facts, not the history of the work:\n" + "\n".join(hits)


def test_no_issue_numbers_in_code_configs_or_scripts():
    """Comments, docstrings and messages in code, recipes and scripts name no issue numbers either."""
    pattern = re.compile(r"issue\s*#\s*\d+|\bissue \d+\b", re.I)
    hits = []
    for top in ("threestudio", "custom", "configs", "scripts", "tests", "launch.py"):
        root = os.path.join(REPO, top)
        paths = [root] if os.path.isfile(root) else glob.glob(os.path.join(root, "**", "*"), recursive=True)
        for path in paths:
            if not path.endswith((".py", ".yaml", ".yml", ".sh")) or path == os.path.abspath(__file__):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                hits += [f"{_rel(path)}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert not hits, "no issue numbers in the code:\n" + "\n".join(hits)


def test_readme_has_the_ci_test_command():
    # .ci/run takes the second line after the marker (the line after the code fence) as the command
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    (i,) = [k for k, line in enumerate(lines) if line.strip() == "<!-- test-command -->"]
    assert lines[i + 1].startswith("```")
    assert lines[i + 2].startswith("python -m pytest") and " tests" in lines[i + 2]


def test_the_checks_catch_what_they_should(tmp_path):
    text = "See [a](missing.md), ![b](img/none.png), [c](https://x.org), [d](#anchor)\n```\n[e](inside.md)\n```\n"
    assert list(_links(text)) == ["missing.md", "img/none.png"]
    for bad in ("fixed in issue #12", "see #3", "before the fix it was slow", "our issue quotes 50 ms",
                "an earlier session measured", "it used to be slower", "previously 40 ms"):
        assert any(re.search(p, bad, re.I) for p in NARRATION), bad
    for ok in ("an earlier stage's mesh", "the color #ff0000", "step 1 of 2", "rows of every run of the trial"):
        assert not any(re.search(p, ok, re.I) for p in NARRATION), ok
