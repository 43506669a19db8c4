"""The documentation's code runs and its links lead somewhere.

Every ```python block of README.md and CONTRIBUTING.md is tagged `runnable` and run: each file's
blocks in order, in one fresh interpreter (as a reader would paste them), with this checkout first on
the path. The examples assert what they show, so a stale signature or a wrong claim fails here.
The relative links of README.md, CONTRIBUTING.md and docs/*.md name files that exist and headings
that exist in them.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT
EXAMPLE_FILES = ("README.md", "CONTRIBUTING.md")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, code) of every fenced block, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def runnable_python(text: str) -> list[str]:
    return [code for info, code in code_blocks(text) if info.split()[:2] == ["python", "runnable"]]


def test_the_extractor_finds_tagged_blocks_only():
    text = "a\n```python runnable\nx = 1\n```\n```python\ny = 2\n```\n```bash\nls\n```\n```python runnable\nz = 3\n```\n"
    assert runnable_python(text) == ["x = 1\n", "z = 3\n"]
    assert [info for info, _ in code_blocks(text)] == ["python runnable", "python", "bash", "python runnable"]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_python_block_is_runnable(name):
    """No python example escapes the test: an untagged block would never be run."""
    untagged = [code[:60] for info, code in code_blocks((ROOT / name).read_text())
                if info.split()[:1] == ["python"] and info.split()[:2] != ["python", "runnable"]]
    assert not untagged, f"{name}: python blocks not tagged `runnable`: {untagged}"


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_the_examples_parse_and_their_imports_resolve(name):
    """The default suite's share of the examples' check (running them all is slow: the test below): the
    blocks, joined in order as the run joins them, are valid Python, and every name they import exists."""
    blocks = runnable_python((ROOT / name).read_text())
    if not blocks:
        pytest.skip(f"{name} has no python examples")
    tree = ast.parse("\n\n".join(blocks), filename=f"{name}'s examples")
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports, f"{name}'s examples import nothing"
    exec(compile(ast.Module(body=imports, type_ignores=[]), f"{name}'s imports", "exec"), {})


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_the_examples_run(name, tmp_path):
    blocks = runnable_python((ROOT / name).read_text())
    if not blocks:
        pytest.skip(f"{name} has no python examples")
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{name}'s examples failed:\n{done.stderr[-3000:]}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def test_slug_matches_githubs():
    assert slug("Scellier & Bengio 2017, one hidden layer") == "scellier--bengio-2017-one-hidden-layer"
    assert slug("J^T e made visible: `bioprop jtranspose`") == "jt-e-made-visible-bioprop-jtranspose"
    assert slug("`bioprop data fetch | check`") == "bioprop-data-fetch--check"


DOC_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"
