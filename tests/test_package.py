"""The package's front door: lazy modules, seeding, device choice, paths."""

import random

import numpy as np
import pytest
import torch

import dalle_mini_impl as dmi


def test_paths_come_from_the_package_location():
    assert dmi.PACKAGE_DIR.name == "dalle_mini_impl"
    assert (dmi.PACKAGE_DIR / "__init__.py").is_file()
    assert dmi.REPO_DIR == dmi.PACKAGE_DIR.parent
    assert dmi.DATA_DIR.is_dir(), "data/ ships with the course"


def test_submodules_import_lazily_and_unknown_names_fail_clearly():
    assert dmi.bpe.visible(" a\n") == "·a⏎"
    assert "viz_bpe" in dir(dmi) and callable(dmi.viz_bpe.draw_tokens)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dmi.nope


def test_seed_everything_makes_every_generator_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(()).item()

    dmi.seed_everything(123)
    first = draw()
    dmi.seed_everything(123)
    assert draw() == first
    dmi.seed_everything(124)
    assert draw() != first


def test_setup_prints_one_line_and_returns_the_device(capsys):
    device = dmi.setup(seed=7)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "seed 7" in out
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dmi.get_device("cpu") == "cpu"


def test_every_file_the_readme_links_or_shows_exists():
    import re

    readme = (dmi.PACKAGE_DIR.parent / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme) + re.findall(r'src="([^"]+)"', readme)
    local = [t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "#"))]
    assert "bench/results/time_to_quality_cpu.png" in local and "data/demo/contact_sheet.png" in local
    missing = [t for t in local if not (dmi.PACKAGE_DIR.parent / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
