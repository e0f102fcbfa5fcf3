"""Every lesson's widgets, driven in a real browser.

For each lesson this test starts a Jupyter server on 127.0.0.1 (a random free
port, a token), opens the notebook in headless Chromium, runs all its cells
from the menu, then performs one real interaction on every control of every
widget view -- drags a slider, types into a text box and presses Enter, picks
another option of a dropdown, clicks "Run Interact" -- and asserts that

- the control took the new value and the view's output changed (a new picture),
- no cell and no view printed an error or anything on stderr,
- the browser logged no console error and no uncaught page error.

The server, its kernels and the browser are stopped by the test's teardown.

What runs: nbval already runs every cell of every lesson, so by default the
browser runs a *trimmed* copy of each lesson: all its markdown, every widget
cell, and the code cells those widgets need (found by following the names
each kept cell uses back to the cells that bind them; see ``widget_slice``).
That keeps the test to a couple of minutes on a 2-core CPU. ``DMI_BROWSER_FULL=1``
runs every cell of every lesson instead.

Frontends: JupyterLab 4 with ipywidgets 8 (the course's ``.venv``), or the
classic Notebook 6.5 with ipywidgets 7 (Colab's stack, ``make colab-stack``),
picked by what is installed, or by ``DMI_BROWSER_FRONTEND=lab|classic``.

The browser is the system's Chromium (Debian: ``apt-get install chromium``),
never one downloaded by Playwright. Without Chromium or Playwright the test is
skipped with the command that gets them; with ``DMI_REQUIRE_BROWSER=1``
(``.ci/run`` sets it) it fails instead. ``DMI_BROWSER_REPORT=FILE`` appends a
table of what each interaction changed.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET_CALL = "dmi.widgets."  # a cell that builds a widget view calls into this module
RUN_ALL_TIMEOUT = 900  # seconds for one lesson's cells on a busy 2-core CPU
OUTPUT_TIMEOUT = 180  # seconds for one view to redraw after an interaction
NEW_TEXT = ("a small yellow circle in the center", "a large blue square at the bottom")


# ---------------------------------------------------------------------------
# What the browser runs: the widget cells and what they need
# ---------------------------------------------------------------------------


class _Names(ast.NodeVisitor):
    """The global names a piece of code reads and binds; comprehension, lambda and function locals left out.

    Example: ``y = [x for x in xs]`` reads {'xs'} and binds {'y'}.
    """

    def __init__(self):
        self.used, self.bound = set(), set()  # name
        self.scopes = []  # the local names of each enclosing function, lambda or comprehension

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            if not any(node.id in scope for scope in self.scopes):
                self.used.add(node.id)
        elif self.scopes:
            self.scopes[-1].add(node.id)
        else:
            self.bound.add(node.id)

    def visit_Import(self, node):
        names = {(a.asname or a.name).split(".")[0] for a in node.names}
        (self.scopes[-1] if self.scopes else self.bound).update(names)

    visit_ImportFrom = visit_Import

    def visit_AugAssign(self, node):  # x += 1 reads x, then binds it
        if isinstance(node.target, ast.Name):
            self.visit_Name(ast.Name(node.target.id, ast.Load()))
        self.generic_visit(node)

    def _local(self, node, args=None):
        if not self.scopes and hasattr(node, "name"):
            self.bound.add(node.name)
        for d in getattr(node, "decorator_list", []):
            self.visit(d)
        names = {a.arg for a in ast.walk(args) if isinstance(a, ast.arg)} if args is not None else set()
        self.scopes.append(names)
        for child in (node.body if isinstance(node.body, list) else [node.body]):
            self.visit(child)
        self.scopes.pop()

    def visit_FunctionDef(self, node):
        for d in node.args.defaults + node.args.kw_defaults:
            if d is not None:
                self.visit(d)
        self._local(node, node.args)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self._local(node, node.args)

    def visit_ClassDef(self, node):
        for b in node.bases:
            self.visit(b)
        self._local(node)

    def _comprehension(self, node):
        self.scopes.append(set())
        for gen in node.generators:
            self.visit(gen)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension


_MAYBE = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With)  # statements that may not bind


def _names(node: ast.AST) -> _Names:
    names = _Names()
    names.visit(node)
    return names


def _bound_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names a cell binds: (surely, maybe). Bindings inside if/for/while/try/with are only 'maybe'.

    Example: ``import torch; x = 1; if c: y = 2`` -> ({'torch', 'x'}, {'y'})
    """
    surely, maybe = set(), set()  # name
    for stmt in tree.body:
        into = maybe if isinstance(stmt, _MAYBE) else surely
        into.update(_names(stmt).bound)
    return surely, maybe


def _used_names(tree: ast.Module) -> set[str]:
    """Names a cell reads before binding them itself: what it needs from earlier cells.

    Example: ``fig, ax = plt.subplots(); ax.plot(x)`` -> {'plt', 'x'}
    """
    used, bound = set(), set()  # name
    for stmt in tree.body:
        names = _names(stmt)
        used |= names.used - bound
        if not isinstance(stmt, _MAYBE):
            bound |= names.bound
    return used


def widget_slice(cells: list[dict]) -> list[int]:
    """Indices of the code cells the widget cells need, widget cells included, in notebook order.

    A backward slice over names: start from the first code cell (the setup cell)
    and every cell that calls ``dmi.widgets.``;
    for each name a kept cell uses, keep the latest earlier cell that binds it
    (and earlier ones too while that binding is only a 'maybe', or the cell
    reads the name before binding it, as in ``x = f(x)``). A cell that only mutates an
    object (``model.train()``) binds nothing, so it is left out: the widgets
    then show the shipped models as loaded, which is all this test needs.

    Example: cells ``import a`` | ``b = a.f()`` | ``slow = a.g()`` | ``dmi.widgets.w(b)``
    (plus ``import dalle_mini_impl as dmi``) keep everything but ``slow = a.g()``.
    """
    code = [(i, ast.parse("".join(c["source"]))) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    keep = {i for i, c in enumerate(cells) if c["cell_type"] == "code" and WIDGET_CALL in "".join(c["source"])}
    keep.add(code[0][0])  # the setup cell, which every learner runs first
    todo = [(i, name) for i, tree in code if i in keep for name in _used_names(tree)]
    done = set()  # (cell index, name)
    while todo:
        at, name = todo.pop()
        if (at, name) in done:
            continue
        done.add((at, name))
        for i, tree in reversed([(i, t) for i, t in code if i < at]):
            surely, maybe = _bound_names(tree)
            if name not in surely | maybe:
                continue
            if i not in keep:
                keep.add(i)
                todo += [(i, used) for used in _used_names(tree)]
            if name in surely and name not in _used_names(tree):
                break
    return sorted(keep)


def lesson_for_browser(src: Path, dest: Path, full: bool) -> tuple[int, int]:
    """Write the copy of ``src`` the browser runs: outputs cleared, trimmed to the widgets' slice unless ``full``.

    Returns (code cells kept, code cells in the lesson).
    """
    nb = json.loads(src.read_text(encoding="utf-8"))
    cells = nb["cells"]
    n_code = sum(c["cell_type"] == "code" for c in cells)
    kept = set(range(len(cells))) if full else set(widget_slice(cells))
    nb["cells"] = [c for i, c in enumerate(cells) if c["cell_type"] != "code" or i in kept]
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return sum(c["cell_type"] == "code" for c in nb["cells"]), n_code


def test_widget_slice_keeps_what_widgets_need():
    cells = [{"cell_type": "code", "source": s} for s in
             ["import dalle_mini_impl as dmi\nimport a", "b = a.f()", "slow = a.g()\nq = 1",
              "if a.c:\n    b = 2", "dmi.widgets.w(b, [q for q in b], lambda slow: slow)"]]
    assert widget_slice(cells) == [0, 1, 3, 4]
    assert widget_slice([{"cell_type": "code", "source": "setup = 1"}] + cells) == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_slice_has_its_widgets(lesson):
    cells = json.loads(lesson.read_text(encoding="utf-8"))["cells"]
    kept = widget_slice(cells)
    widget_cells = [i for i in kept if WIDGET_CALL in "".join(cells[i]["source"])]
    assert widget_cells, f"{lesson.name} builds no widget view"
    assert kept[0] == next(i for i, c in enumerate(cells) if c["cell_type"] == "code"), "the setup cell is kept"


# ---------------------------------------------------------------------------
# The browser and the server
# ---------------------------------------------------------------------------


def _skip_or_fail(why: str):
    if os.environ.get("DMI_REQUIRE_BROWSER") == "1":
        pytest.fail(why + " (DMI_REQUIRE_BROWSER=1: the browser test must run here)")
    pytest.skip(why)


def _frontend() -> str | None:
    chosen = os.environ.get("DMI_BROWSER_FRONTEND")
    if chosen:
        return chosen
    try:
        import jupyterlab  # noqa: F401
        return "lab"
    except ImportError:
        pass
    try:
        import notebook
        return "classic" if int(notebook.__version__.split(".")[0]) < 7 else None
    except ImportError:
        return None


def _chromium() -> str | None:
    for candidate in (os.environ.get("DMI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # to 127.0.0.1, never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A Jupyter server this test started, and everything needed to stop it."""

    frontend: str
    url: str
    token: str
    root: Path
    proc: subprocess.Popen
    log: Path
    lessons: dict = field(default_factory=dict)  # name -> (code cells kept, code cells in the lesson)

    def api(self, path: str, method: str = "GET"):
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(f"{self.url}{path}{sep}token={self.token}", method=method)
        with _DIRECT.open(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def busy(self) -> bool:
        return any(k.get("execution_state") != "idle" for k in self.api("/api/kernels"))

    def shutdown_kernels(self):
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")
        for kernel in self.api("/api/kernels"):
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")

    def page_url(self, name: str) -> str:
        if self.frontend == "lab":  # a fresh workspace per lesson, so no other notebook is restored beside it
            return f"{self.url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={self.token}"
        return f"{self.url}/notebooks/{name}?token={self.token}"


def _server_command(frontend: str, port: int, token: str, root: Path) -> list[str]:
    if frontend == "lab":
        return [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
                "--LabApp.expose_app_in_browser=True"]
    return [sys.executable, "-m", "notebook", "--no-browser", "--NotebookApp.ip=127.0.0.1",
            f"--NotebookApp.port={port}", "--NotebookApp.port_retries=0", f"--NotebookApp.token={token}",
            f"--NotebookApp.notebook_dir={root}", "--NotebookApp.allow_root=True"]


def _lab_settings(settings: Path):
    """JupyterLab settings for the test: render every cell (no windowing), fetch no news, check no updates."""
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


def _stop(proc: subprocess.Popen, children: list):
    """Stop the server by its PID, then any of its child processes (kernels) still alive, by theirs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for child in children:
        try:
            if child.is_running():
                child.terminate()
                child.wait(timeout=10)
        except Exception:  # already gone, or did not stop: kill it
            try:
                child.kill()
            except Exception:
                pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    frontend = _frontend()
    if frontend is None:
        _skip_or_fail("neither JupyterLab nor the classic Notebook (< 7) is installed: `make install`")
    base = tmp_path_factory.mktemp("jupyter")
    root = base / "lessons"
    root.mkdir()
    full = os.environ.get("DMI_BROWSER_FULL") == "1"
    lessons = {p.name: lesson_for_browser(p, root / p.name, full) for p in LESSONS}
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH")}
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("IPYTHONDIR", "ipython")]:
        env[var] = str(base / sub)
        (base / sub).mkdir()
    _lab_settings(base / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_server_command(frontend, port, token, root), cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    srv = Server(frontend, f"http://127.0.0.1:{port}", token, root, proc, log, lessons)
    children = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the {frontend} server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                srv.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the {frontend} server did not answer in 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield srv
    finally:
        try:
            import psutil
            children = psutil.Process(proc.pid).children(recursive=True)
        except Exception:
            children = []
        try:
            srv.shutdown_kernels()
        except Exception:
            pass
        _stop(proc, children)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright for Python is not installed: `make install` (it is in the dev extras), "
                      "or `pip install playwright`. It drives the system Chromium: never run `playwright install`")
    chromium = _chromium()
    if chromium is None:
        _skip_or_fail("no Chromium found: on Debian/Ubuntu `sudo apt-get install -y chromium`, "
                      "or set DMI_CHROMIUM=/path/to/chromium (the test never downloads a browser)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------------------
# The two frontends: run all cells, read what the cells printed
# ---------------------------------------------------------------------------

# Each returns [{count, outputs: [{type, name, text}]}] for the code cells, texts only for errors and stderr.
_LAB_CELLS = """() => {
  const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells, out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    const outputs = c.outputs.toJSON().map(o => ({type: o.output_type, name: o.name || '',
      text: o.output_type === 'error' ? o.ename + ': ' + o.evalue : (o.name === 'stderr' ? [].concat(o.text).join('') : '')}));
    out.push({count: c.executionCount, outputs: outputs});
  }
  return out;
}"""
_CLASSIC_CELLS = """() => Jupyter.notebook.get_cells().filter(c => c.cell_type === 'code').map(c => ({
  count: (typeof c.input_prompt_number === 'number') ? c.input_prompt_number : null,
  outputs: c.output_area.outputs.map(o => ({type: o.output_type, name: o.name || '',
    text: o.output_type === 'error' ? o.ename + ': ' + o.evalue : (o.name === 'stderr' ? [].concat(o.text).join('') : '')}))
}))"""
_LAB_READY = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(k && k.connectionStatus === 'connected' && k.status === 'idle' && w.content.model);
}"""
_CLASSIC_READY = """() => !!(window.Jupyter && Jupyter.notebook && Jupyter.notebook._fully_loaded
  && Jupyter.notebook.kernel && Jupyter.notebook.kernel.is_connected())"""


def _open(page, server: Server, name: str):
    page.goto(server.page_url(name))
    page.wait_for_function(_LAB_READY if server.frontend == "lab" else _CLASSIC_READY, timeout=120_000)


def _run_all(page, server: Server):
    """Run all cells from the menu, as a learner does."""
    if server.frontend == "lab":
        page.locator("#jp-MainMenu .lm-MenuBar-item", has_text="Run").first.click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    else:
        page.locator("#celllink").click()
        page.locator("#run_all_cells").click()


def _cells(page, server: Server) -> list[dict]:
    return page.evaluate(_LAB_CELLS if server.frontend == "lab" else _CLASSIC_CELLS)


def _problems(cells: list[dict]) -> list[str]:
    return [f"code cell {i + 1}: {o['type']} {o['name']} {o['text'].strip()[:2000]}"
            for i, c in enumerate(cells) for o in c["outputs"] if o["type"] == "error" or o["name"] == "stderr"]


def _wait_for_all_cells(page, server: Server, name: str):
    started = time.monotonic()
    deadline = started + RUN_ALL_TIMEOUT
    while True:
        cells = _cells(page, server)
        problems = _problems(cells)
        busy = server.busy()
        if problems and not busy:
            pytest.fail(f"{name}: a cell failed in the browser:\n" + "\n".join(problems))
        if all(c["count"] is not None for c in cells) and not busy:
            return cells
        if not busy and all(c["count"] is None for c in cells) and time.monotonic() > started + 60:
            pytest.fail(f"{name}: Run All Cells started no cell in 60 s")
        if time.monotonic() > deadline:
            waiting = [i + 1 for i, c in enumerate(cells) if c["count"] is None]
            pytest.fail(f"{name}: code cells {waiting} had not run after {RUN_ALL_TIMEOUT} s")
        time.sleep(1)


# ---------------------------------------------------------------------------
# One real interaction per control, and what it changed
# ---------------------------------------------------------------------------

# A fingerprint of a view's output: a hash of every image and of the text.
_OUTPUT_PRINT = """el => {
  const out = el.querySelector(':scope > .widget-output, :scope > .jupyter-widgets-output-area');  // ipywidgets 8, 7
  if (!out) return {print: '', images: 0, text: '', bad: 0};
  let h = 2166136261;
  const s = Array.from(out.querySelectorAll('img')).map(i => i.src).join('|') + '\\n' + out.innerText;
  for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
  const bad = out.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .output_stderr, .output_error').length;
  return {print: (out.innerText.trim() || out.querySelectorAll('img').length) ? String(h >>> 0) : '',
          images: out.querySelectorAll('img').length, text: out.innerText.trim().slice(0, 300), bad: bad};
}"""
_KIND = """el => { const c = el.classList;
  return c.contains('widget-output') || c.contains('jupyter-widgets-output-area') ? 'output' : c.contains('widget-slider') || c.contains('widget-hslider') ? 'slider'
    : c.contains('widget-dropdown') ? 'dropdown' : c.contains('widget-text') ? 'text'
    : c.contains('widget-button') || el.tagName === 'BUTTON' ? 'button' : 'other'; }"""


@dataclass
class Row:
    lesson: str
    view: str
    control: str
    interaction: str
    change: str
    seconds: float


def _label(control) -> str:
    label = control.locator(".widget-label")
    return (label.first.inner_text() if label.count() else control.inner_text()).strip()


def _drag(page, control) -> str:
    handle = control.locator(".noUi-handle, .ui-slider-handle").first
    track = control.locator(".noUi-target, .ui-slider").first
    readout = control.locator(".widget-readout").first
    before = readout.inner_text().strip()
    handle.scroll_into_view_if_needed()
    hb, tb = handle.bounding_box(), track.bounding_box()
    x0, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    x1 = tb["x"] + tb["width"] * (0.25 if (x0 - tb["x"]) / tb["width"] > 0.5 else 0.75)
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=10)
    page.mouse.up()
    after = readout.inner_text().strip()
    assert after != before, f"dragging the slider left its value at {before}"
    return f"drag {before} → {after}"


def _pick(control) -> str:
    select = control.locator("select").first
    select.scroll_into_view_if_needed()
    options = [o.replace("\xa0", " ").strip() for o in select.locator("option").all_inner_texts()]
    now = select.evaluate("s => s.selectedIndex")
    target = now - 1 if now > 0 else 1  # the option just above, or the second one
    select.select_option(index=target)
    assert select.evaluate("s => s.selectedIndex") == target
    return f"pick {options[now]!r} → {options[target]!r}"


def _type(control) -> str:
    box = control.locator("input").first
    box.scroll_into_view_if_needed()
    before = box.input_value()
    text = NEW_TEXT[0] if before != NEW_TEXT[0] else NEW_TEXT[1]
    box.click()
    box.press("Control+a")
    box.press_sequentially(text)
    box.press("Enter")
    assert box.input_value() == text
    return f"type {text!r} + Enter"


def _wait_for_new_output(server: Server, view, before: str, what: str) -> dict:
    """Wait until the view's output differs from ``before``, the kernel is idle and the output holds still."""
    deadline = time.monotonic() + OUTPUT_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        now = view.evaluate(_OUTPUT_PRINT)
        if now["print"] and now["print"] != before and not server.busy():
            if last is not None and now["print"] == last["print"]:
                return now
            last = now
            time.sleep(0.5)
        else:
            last = None
            time.sleep(0.25)
    now = view.evaluate(_OUTPUT_PRINT)
    shot = server.root / "failed.png"
    view.page.screenshot(path=str(shot))
    pytest.fail(f"{what}: the output did not change within {OUTPUT_TIMEOUT} s "
                f"(it shows {now['text'][:200]!r}; screenshot: {shot})")


def _describe(out: dict) -> str:
    first_line = out["text"].splitlines()[0][:70] if out["text"] else ""
    return f"new figure ({out['images']} image{'s' * (out['images'] != 1)})" + (f", text {first_line!r}" if first_line else "")


def _exercise_view(page, server: Server, lesson: str, view, name: str) -> list[Row]:
    """One interaction per control of one interact view; for interact_manual views, each followed by the button."""
    view.scroll_into_view_if_needed()
    controls = [(c, c.evaluate(_KIND)) for c in view.locator(":scope > *").all()]
    kinds = [k for _, k in controls]
    assert "output" in kinds, f"{name}: the view has no output area ({kinds})"
    button = next((c for c, k in controls if k == "button"), None)
    rows = []

    def act(control, kind):
        start = time.monotonic()
        before = view.evaluate(_OUTPUT_PRINT)["print"]
        label = _label(control)
        done = {"slider": lambda: _drag(page, control), "dropdown": lambda: _pick(control),
                "text": lambda: _type(control)}.get(kind, lambda: None)()
        if button is not None:  # interact_manual: nothing runs until the button is clicked
            button.click()
            done = f"{done}, click {_label(button)!r}" if done else f"click {_label(button)!r}"
        what = f"{lesson} {name} {kind} {label!r} ({done})"
        out = _wait_for_new_output(server, view, before, what)
        assert out["bad"] == 0, f"{what}: the output shows an error or stderr: {out['text']!r}"
        assert out["images"] >= 1, f"{what}: the output shows no figure: {out['text']!r}"
        rows.append(Row(lesson, name, f"{kind} {label!r}", done, _describe(out), time.monotonic() - start))

    if button is not None:
        act(button, "button")
    for control, kind in controls:
        if kind in ("slider", "dropdown", "text"):
            act(control, kind)
        elif kind not in ("output", "button"):
            pytest.fail(f"{lesson} {name}: a control of an unknown kind ({kind}): extend the test")
    return rows


# Console errors of the frontend itself, which say nothing about the course. Each says why it is here.
IGNORED_CONSOLE = (
    # The classic Notebook 6.5 ships MathJax 2 without its .otf fonts; MathJax probes for them
    # (through about:blank) on any page with math, then falls back to its web fonts.
    "Access to font at 'about:blank'",
    "net::ERR_FAILED (at about:blank)",
    "/static/components/MathJax/fonts/HTML-CSS/TeX/otf/",
)


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_widgets_in_browser(lesson, browser, server):
    start = time.monotonic()
    name = lesson.name
    cells_src = json.loads((server.root / name).read_text(encoding="utf-8"))["cells"]
    widget_cells = ["".join(c["source"]) for c in cells_src if c["cell_type"] == "code" and WIDGET_CALL in "".join(c["source"])]
    console = []  # errors the page logged
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: console.append(f"console {m.type}: {m.text} (at {m.location.get('url')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"page error: {e}"))
    try:
        _open(page, server, name)
        _run_all(page, server)
        cells = _wait_for_all_cells(page, server, name)
        assert not _problems(cells), "\n".join(_problems(cells))
        ran = time.monotonic() - start
        views = page.locator(".widget-interact")
        assert views.count() == len(widget_cells), \
            f"{name}: {len(widget_cells)} widget cells but {views.count()} views rendered"
        rows = []
        for k in range(views.count()):
            call = widget_cells[k].split(WIDGET_CALL, 1)[1].split("(", 1)[0]
            rows += _exercise_view(page, server, name, views.nth(k), call)
        problems = _problems(_cells(page, server))
        assert not problems, f"{name}: after the interactions:\n" + "\n".join(problems)
        console = [c for c in console if not any(s in c for s in IGNORED_CONSOLE)]
        assert not console, f"{name}: the browser logged errors:\n" + "\n".join(console)
    finally:
        page.close()
        try:
            server.shutdown_kernels()
        except Exception:
            pass
    kept, total = server.lessons[name]
    summary = (f"{name} [{server.frontend}]: {kept} of {total} code cells run in {ran:.0f} s, "
               f"{len(rows)} interactions, {time.monotonic() - start:.0f} s in all")
    print(summary)
    for r in rows:
        print(f"  {r.view:22} {r.control:28} {r.interaction:60} {r.change} ({r.seconds:.1f} s)")
    report = os.environ.get("DMI_BROWSER_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(f"\n{summary}\n\n| lesson | widget | control | interaction | what changed | s |\n|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r.lesson[:2]} | `{r.view}` | {r.control} | {r.interaction} | {r.change} | {r.seconds:.1f} |\n")
