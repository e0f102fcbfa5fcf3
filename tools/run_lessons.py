"""Run lessons top to bottom, one cell at a time, and say which cell broke and how.

    python tools/run_lessons.py notebooks/*.ipynb --out .cache/colab-stack

Each lesson runs in a fresh kernel (``python3``) started in ``notebooks/``, as
``jupyter nbconvert --execute`` does, and stops at its first error. The
executed copies are written to ``--out``; the originals are never touched.
For each lesson it prints the time it took, or the cell that failed (its
number among the code cells, its first line, and the error); a cell still
running after ``--timeout`` seconds counts as failed. A lesson whose kernel
died or stopped answering (a timeout, not an error in a cell) is run once more
in a new kernel (``--retries``), and says so. Exit status 1 when any lesson
failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError


def run_lesson(path: Path, out: Path, timeout: int) -> tuple[str | None, bool]:
    """Run one lesson: (None when every cell ran, else what broke; whether the kernel broke rather than a cell)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    problem, kernel_broke = None, False
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    try:
        with client.setup_kernel():
            for n, i in enumerate(code_cells, 1):
                cell = nb.cells[i]
                start = time.monotonic()
                try:
                    client.execute_cell(cell, i)
                except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
                    first = next((line for line in cell.source.splitlines() if not line.startswith("#")), "")
                    error = str(e).strip().splitlines()
                    problem = (f"code cell {n} of {len(code_cells)} (`{first[:80]}`): {type(e).__name__}\n"
                               + "\n".join("    " + line for line in error[-25:]))
                    kernel_broke = not isinstance(e, CellExecutionError)  # it died, or stopped answering
                    break
                took = time.monotonic() - start
                if took > 60:
                    print(f"    {path.name}: code cell {n} took {took:.0f} s", flush=True)
    finally:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.name)
    return problem, kernel_broke


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(".cache/lessons"), help="where the executed copies go")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may take")
    parser.add_argument("--retries", type=int, default=1,
                        help="new kernels for a lesson whose kernel died or stopped answering (default: 1)")
    args = parser.parse_args(argv)
    failed = []
    for lesson in args.lessons:
        start = time.monotonic()
        problem, kernel_broke = run_lesson(lesson, args.out, args.timeout)
        for _ in range(args.retries):
            if not kernel_broke:
                break
            print(f"retry   {lesson}: {problem.splitlines()[0]}", flush=True)
            problem, kernel_broke = run_lesson(lesson, args.out, args.timeout)
        took = time.monotonic() - start
        if problem is None:
            print(f"ok      {lesson} ({took:.0f} s)", flush=True)
        else:
            print(f"FAILED  {lesson} ({took:.0f} s): {problem}", flush=True)
            failed.append(lesson)
    print(f"{len(args.lessons) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
