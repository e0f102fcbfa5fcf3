"""Point the course at another GitHub repository: the README's Colab badges and every lesson's setup cell.

The repository URL is written where Colab needs it: once in each lesson's
first code cell (``REPO_URL = "..."``, which clones the course on Colab) and
in each "Open In Colab" badge of the README. This script is the one place to
change it: it reads the current URL from the lessons, checks that every
badge and cell agrees, and rewrites them all.

Usage (from the repository root, in a fork)::

    python tools/set_repo_url.py https://github.com/YOU/YOUR-FORK            # badges open branch main
    python tools/set_repo_url.py https://github.com/YOU/YOUR-FORK --branch spring-course
    python tools/set_repo_url.py --check                                       # print the URL, check agreement

Only the URL text changes: the notebooks' outputs and formatting are left as
they are. Does not handle: repositories outside GitHub (Colab's badges open
notebooks from GitHub only).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_URL = re.compile(r'REPO_URL = \\?"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?\\?"')
BADGE = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+)/([\w.-]+)/blob/([\w./-]+?)/(notebooks/[\w.-]+\.ipynb)")
GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def lessons(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def current(root: Path = ROOT) -> tuple[str, str, dict[str, list[str]]]:
    """(owner, name) every badge and setup cell names, and where each was found; raises if they disagree.

    Example: ``('dalle-mini-impl', 'dalle-mini-impl', {'README.md': [...], 'notebooks/01_bpe_tokenizer.ipynb': [...]})``
    """
    found = {}  # file -> ["owner/name", ...]
    for nb in lessons(root):
        found[str(nb.relative_to(root))] = [f"{o}/{n}" for o, n in SETUP_URL.findall(nb.read_text(encoding="utf-8"))]
    found["README.md"] = [f"{o}/{n}" for o, n, _, _ in BADGE.findall((root / "README.md").read_text(encoding="utf-8"))]
    names = {name for names in found.values() for name in names}
    missing = [f for f, names in found.items() if not names]
    if missing:
        raise SystemExit(f"no repository URL found in {', '.join(missing)}")
    if len(names) != 1:
        raise SystemExit("the badges and setup cells name different repositories: "
                         + "; ".join(f"{f}: {sorted(set(n))}" for f, n in found.items()))
    owner, name = names.pop().split("/")
    return owner, name, found


def set_repo_url(url: str, branch: str = "main", root: Path = ROOT) -> list[str]:
    """Rewrite every badge and setup cell to ``url``; returns the files changed."""
    m = GITHUB.match(url)
    if not m:
        raise SystemExit(f"not a GitHub repository URL: {url!r} (expected https://github.com/OWNER/NAME)")
    new_owner, new_name = m.groups()
    owner, name, _ = current(root)
    changed = []
    for nb in lessons(root):
        text = nb.read_text(encoding="utf-8")
        new = SETUP_URL.sub(lambda m_: m_.group(0).replace(f"github.com/{owner}/{name}",
                                                          f"github.com/{new_owner}/{new_name}"), text)
        if new != text:
            nb.write_text(new, encoding="utf-8")
            changed.append(str(nb.relative_to(root)))
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = BADGE.sub(lambda m_: f"https://colab.research.google.com/github/{new_owner}/{new_name}/blob/{branch}/"
                               f"{m_.group(4)}", text)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append("README.md")
    current(root)  # everything agrees again
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="https://github.com/OWNER/NAME of the fork")
    parser.add_argument("--branch", default="main", help="the branch the badges open (default: main)")
    parser.add_argument("--check", action="store_true", help="only print the current URL and check agreement")
    args = parser.parse_args(argv)
    if args.check or not args.url:
        owner, name, found = current()
        print(f"https://github.com/{owner}/{name} ({sum(map(len, found.values()))} places agree)")
        return 0
    for f in set_repo_url(args.url, args.branch):
        print("rewrote", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
