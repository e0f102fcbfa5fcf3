"""tools/run_lessons.py: the cell that broke is named; a dead kernel gets one more try, an error in a cell does not."""

import importlib.util

import nbformat

from dalle_mini_impl import REPO_DIR

spec = importlib.util.spec_from_file_location("run_lessons", REPO_DIR / "tools" / "run_lessons.py")
run_lessons = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lessons)


def _lesson(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_good_lesson_passes_and_a_broken_one_names_its_cell(tmp_path, capsys):
    good = _lesson(tmp_path / "good.ipynb", "x = 1", "assert x == 1")
    bad = _lesson(tmp_path / "bad.ipynb", "x = 1", "# a comment first\nraise ValueError('broken here')")
    assert run_lessons.main([str(good), str(bad), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"ok      {good}" in out
    assert f"FAILED  {bad}" in out and "code cell 2 of 2 (`raise ValueError('broken here')`)" in out
    assert "retry" not in out  # an error in a cell is the lesson's, not the kernel's: no second run
    assert (tmp_path / "out" / "good.ipynb").exists() and (tmp_path / "out" / "bad.ipynb").exists()


def test_a_lesson_whose_kernel_dies_is_run_once_more(tmp_path, capsys):
    dies = _lesson(tmp_path / "dies.ipynb", "import os\nos._exit(1)")
    assert run_lessons.main([str(dies), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert out.count(f"retry   {dies}") == 1 and "DeadKernelError" in out
    assert run_lessons.main([str(dies), "--out", str(tmp_path / "out"), "--retries", "0"]) == 1
    assert "retry" not in capsys.readouterr().out
