"""The Colab setup cell, each lesson's first code cell: one repository, and an install that leaves Colab's torch and ipywidgets alone.

The cell is run as it is written, with three stand-ins: a fake ``google.colab``
module (what the cell looks for), a local clone of this repository as
``REPO_URL`` (a ``file://`` URL), and a temporary folder for Colab's
``/content``. Its ``git clone`` really runs; its ``pip install`` runs with
``--dry-run --report``, and pip's report says what it would install or replace
in this environment (under ``make colab-stack``: Colab's ipywidgets 7.7.1).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLAB_KEEPS = {"torch", "ipywidgets", "widgetsnbextension", "jupyterlab-widgets"}  # Colab's own; never replaced
COLAB_IPYWIDGETS = "7.7.1"  # what Colab ships, and what its frontend renders
URL_LINE = re.compile(r'^REPO_URL = "([^"]+)"$', re.M)


def _tool():
    spec = importlib.util.spec_from_file_location("set_repo_url", REPO / "tools" / "set_repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_cell(lesson: Path) -> str:
    cells = json.loads(lesson.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_every_lesson_has_the_same_setup_cell():
    cells = {lesson.name: setup_cell(lesson) for lesson in LESSONS}
    first = cells[LESSONS[0].name]
    assert "google.colab" in first and URL_LINE.search(first), "the first code cell is the Colab setup cell"
    assert [name for name, cell in cells.items() if cell != first] == []


def test_every_badge_and_setup_cell_name_one_repository():
    owner, name, found = _tool().current(REPO)
    assert len(found["README.md"]) == len(LESSONS), "one Colab badge per lesson"
    assert all(len(found[str(p.relative_to(REPO))]) == 1 for p in LESSONS), "REPO_URL once per lesson"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for lesson in LESSONS:  # each badge opens its own lesson
        assert f"/github/{owner}/{name}/blob/main/notebooks/{lesson.name})" in readme


def test_set_repo_url_moves_every_place(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for lesson in LESSONS:
        shutil.copy(lesson, tmp_path / "notebooks" / lesson.name)
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    tool = _tool()
    owner, name, _ = tool.current(tmp_path)
    changed = tool.set_repo_url("https://github.com/a-teacher/spring-course.git", branch="spring", root=tmp_path)
    assert sorted(changed) == sorted(["README.md"] + [f"notebooks/{p.name}" for p in LESSONS])
    assert tool.current(tmp_path)[:2] == ("a-teacher", "spring-course")
    for path in [tmp_path / "README.md", *(tmp_path / "notebooks").glob("*.ipynb")]:
        assert f"{owner}/{name}" not in path.read_text(encoding="utf-8"), f"{path.name} still names {owner}/{name}"
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert readme.count("colab.research.google.com/github/a-teacher/spring-course/blob/spring/notebooks/") == len(LESSONS)
    for lesson in LESSONS:  # only the URL changed, and the notebook is still the same JSON otherwise
        before = json.loads(lesson.read_text(encoding="utf-8"))
        after = json.loads((tmp_path / "notebooks" / lesson.name).read_text(encoding="utf-8"))
        assert URL_LINE.search(setup_cell(tmp_path / "notebooks" / lesson.name)).group(1) == \
            "https://github.com/a-teacher/spring-course"
        after["cells"][next(i for i, c in enumerate(after["cells"]) if c["cell_type"] == "code")] = \
            before["cells"][next(i for i, c in enumerate(before["cells"]) if c["cell_type"] == "code")]
        assert after == before


def test_setup_cell_names_the_repository_only_in_repo_url():
    cell = setup_cell(LESSONS[0])
    url = URL_LINE.search(cell).group(1)
    name = url.rstrip("/").removesuffix(".git").rsplit("/", 1)[1]
    rest = cell.replace(url, "")  # a fork renames the repository in REPO_URL alone
    assert name not in rest, f"{name!r} appears in the setup cell outside REPO_URL"


def test_requirements_admit_colabs_torch_and_ipywidgets():
    """No requirement can make pip replace Colab's torch or ipywidgets 7.7.1: lower bounds only, met by Colab."""
    reqs = [Requirement(r) for r in importlib.metadata.requires("dalle_mini_impl") or []]
    deps = {canonicalize_name(r.name): r for r in reqs if r.marker is None}  # the install's, not an extra's
    assert deps["ipywidgets"].specifier.contains(COLAB_IPYWIDGETS)
    for name in COLAB_KEEPS & set(deps):
        ops = {spec.operator for spec in deps[name].specifier}
        assert ops <= {">="}, f"{name}{deps[name].specifier}: only a lower bound never replaces Colab's {name}"


def _run_setup_cell(lesson: Path, monkeypatch, tmp_path, colab: bool) -> tuple[list[list[str]], dict]:
    """Run the lesson's setup cell with the stand-ins; return the commands it ran and the namespace it left."""
    cell = setup_cell(lesson)
    assert len(URL_LINE.findall(cell)) == 1 and cell.count('Path("/content")') == 1, "the cell's shape changed"
    cell = URL_LINE.sub(f'REPO_URL = "{REPO.as_uri()}"', cell)  # a local clone instead of GitHub
    cell = cell.replace('Path("/content")', f'Path("{tmp_path}/content")')
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # put back as it was after the test
    calls, real_run = [], subprocess.run

    def run(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        if list(cmd[1:4]) == ["-m", "pip", "install"]:  # ask pip what it would do, and change nothing
            cmd = [*cmd, "--dry-run", "--report", str(tmp_path / "pip-report.json")]
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    namespace = {"__name__": "__main__"}
    exec(compile(cell, f"{lesson.name}: setup cell", "exec"), namespace)
    namespace["sys_path"] = list(sys.path)
    return calls, namespace


def test_setup_cell_does_nothing_outside_colab(monkeypatch, tmp_path):
    before = list(sys.path)
    calls, namespace = _run_setup_cell(LESSONS[0], monkeypatch, tmp_path, colab=False)
    assert calls == [] and namespace["sys_path"] == before and not (tmp_path / "content").exists()


def test_setup_cell_on_colab_leaves_torch_and_ipywidgets_alone(monkeypatch, tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout of the course to clone from")
    calls, namespace = _run_setup_cell(LESSONS[0], monkeypatch, tmp_path, colab=True)
    root = Path(namespace["root"])
    assert [c[:2] for c in calls] == [["git", "clone"], [sys.executable, "-m"]], calls
    assert (root / "pyproject.toml").exists() and (root / "dalle_mini_impl" / "__init__.py").exists()
    pip = calls[1]
    assert pip[:4] == [sys.executable, "-m", "pip", "install"]
    flags = {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed", "--upgrade-strategy"}
    assert not flags & set(pip), f"the install may replace what Colab has: {pip}"
    assert pip[4:] == ["-q", "-e", str(root)], f"the cell installs only the course package: {pip}"
    report = json.loads((tmp_path / "pip-report.json").read_text(encoding="utf-8"))
    would = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    touched = {name: version for name, version in would.items() if name in COLAB_KEEPS}
    assert touched == {}, f"pip would install or replace Colab's own: {touched}"
    assert "dalle-mini-impl" in would, would
    assert namespace["sys_path"][0] == str(root), "the clone goes first on sys.path (the editable install is not "\
                                                  "seen by a kernel that is already running)"
