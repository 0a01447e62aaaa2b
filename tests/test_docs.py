"""The README and docs/ link to files that exist, and every command has its page."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_every_command_has_a_page():
    from ckptctl.cli.app import app

    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    missing = [n for n in sorted(names) if not (ROOT / "docs" / "commands" / f"{n}.md").exists()]
    assert not missing, missing


def _tour_lines() -> list[str]:
    """The command lines of the README's two-minute tour, in order (``$ `` prompts and bash blocks)."""
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A two-minute tour") : text.index("\n## ", text.index("## A two-minute tour") + 5)]
    lines, block = [], None
    for line in tour.splitlines():
        if line.startswith("```"):
            block = None if block else line[3:]
            continue
        if block == "console" and line.startswith("$ "):
            lines.append(line[2:])
        elif block == "bash" and line.strip():
            lines.append(line)
    return [line.split("  #")[0].strip() for line in lines]


def test_readme_opens_with_the_two_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "ckptctl demo demo_checkpoints" in blocks[0] and "python -m pytest" in blocks[1]
    assert text.index("## A two-minute tour") < text.index("## Documentation")
    assert "Python ≥ 3.10" in text and "download.pytorch.org/whl/cpu" in text


def test_the_readme_tour_runs_as_written(ckpt_dir, tmp_path, monkeypatch):
    """Every command of the tour, in order, on a checkpoint directory like the demo's: the exit codes the
    README states (validate and compare find something: 1; du may cross --warn-free: 0 or 1; else 0)."""
    import shlex
    import shutil

    from typer.testing import CliRunner

    from ckptctl.cli.app import app

    shutil.copytree(ckpt_dir, tmp_path / "demo_checkpoints", symlinks=True)
    monkeypatch.chdir(tmp_path)
    lines = _tour_lines()
    ran = []
    for line in lines:
        words = shlex.split(line)
        if words[0] == "truncate":
            assert words[1] == "-s", line
            os.truncate(tmp_path / words[3], int(words[2]))
            continue
        assert words[0] == "ckptctl", line
        result = CliRunner().invoke(app, words[1:])
        expected = {"validate": {1}, "compare": {1}, "du": {0, 1}}.get(words[1], {0})
        assert result.exit_code in expected, (line, result.output)
        ran.append(words[1])
    assert set(ran) >= {c.name for c in app.registered_commands} - {"demo"}  # the tour shows every command


def test_the_install_facts_the_readme_states_are_the_packages():
    """Issue #14: Python >= 3.10 stated, numpy a dependency (no "Failed to initialize NumPy"), CPU torch explained."""
    project = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.10"', project, re.M)
    dependencies = project[project.index("dependencies = [") : project.index("]", project.index("dependencies = ["))]
    assert re.search(r'^\s*"numpy>=', dependencies, re.M) and re.search(r'^\s*"torch>=2\.4"', dependencies, re.M)
    readme = (ROOT / "README.md").read_text()
    assert "Python ≥ 3.10" in readme and "`torch>=2.4`" in readme
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
    pinned = re.search(r"^torch==([\d.]+)", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and f"torch ({pinned.group(1)}, CPU)" in readme  # the README names the pinned version
