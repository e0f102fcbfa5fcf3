"""The shared defaults live in one torch-free place, and every entry point reads them from there."""

import subprocess
import sys

from dalle_mini_impl import cli, defaults, sampling


def test_defaults_import_nothing_heavy_and_the_cli_help_needs_no_torch():
    code = ("import sys; import dalle_mini_impl.defaults, dalle_mini_impl.cli as c; "
            "c.build_parser().format_help(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_entry_point_uses_the_one_default():
    assert (sampling.CONDITION_SCALE, sampling.TEMPERATURE) == (defaults.CONDITION_SCALE, defaults.TEMPERATURE)
    for command in ("generate", "evaluate"):
        args = cli.build_parser().parse_args([command] + (["a red circle", "--out", "x"] if command == "generate" else []))
        assert (args.cond_scale, args.temperature) == (defaults.CONDITION_SCALE, defaults.TEMPERATURE)
    assert cli.SPECIAL_TOKENS is defaults.SPECIAL_TOKENS
