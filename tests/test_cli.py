"""The command line of lessons 0–1 (tokenize, render, grade, train-tokenizer) and the demo."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dalle_mini_impl import cli, grader
from dalle_mini_impl.bpe import ByteLevelBPE


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "tokenize", "train-tokenizer", "render", "grade", "generate", "evaluate"):
        assert name in out


def test_tokenize_prints_pieces_and_ids(capsys):
    assert cli.main(["tokenize", "a small red circle"]) == 0
    out = capsys.readouterr().out
    assert "4 tokens" in out and "·small" in out


def test_render_then_grade_round_trip(tmp_path, capsys):
    caption = "a large blue diamond to the left of a small red cross"
    assert cli.main(["render", caption, "--out", str(tmp_path), "--seed", "3"]) == 0
    (png,) = tmp_path.glob("*.png")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (64, 64, 3) and grader.grade(image, caption).match
    capsys.readouterr()
    assert cli.main(["grade", str(png), caption]) == 0
    assert capsys.readouterr().out.startswith("match")
    assert cli.main(["grade", str(png), "a large blue diamond to the right of a small red cross"]) == 1
    assert "relation WRONG" in capsys.readouterr().out


def test_render_rejects_text_outside_the_grammar(tmp_path, capsys):
    assert cli.main(["render", "a cat on a mat", "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_grade_says_when_a_caption_cannot_be_graded(tmp_path, capsys):
    path = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(path)
    assert cli.main(["grade", str(path), "a photo of a cat"]) == 3  # cannot grade: 3, not 1 (no match)
    assert "cannot grade" in capsys.readouterr().out


def test_train_tokenizer_writes_both_formats(tmp_path):
    assert cli.main(["train-tokenizer", "--captions", "300", "--out", str(tmp_path)]) == 0
    ours = ByteLevelBPE.load(tmp_path / "bpe.json")
    assert ours.special_tokens == cli.SPECIAL_TOKENS
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "a small green square to the left of a large purple cross"
    assert hf.encode(text).ids == ours.encode(text)


def test_shipped_tokenizer_is_reproduced_by_its_command(tmp_path):
    """data/tokenizer is exactly what `train-tokenizer --captions 50000 --seed 0` writes."""
    from dalle_mini_impl import DATA_DIR

    assert cli.main(["train-tokenizer", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "bpe.json").read_text()) == json.loads((DATA_DIR / "tokenizer" / "bpe.json").read_text())


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A stand-in for data/ holding only the shipped tokenizer, so the demo tests never see data/transformer."""
    import dalle_mini_impl

    root = tmp_path / "data"
    (root / "tokenizer").mkdir(parents=True)
    shutil.copy(dalle_mini_impl.DATA_DIR / "tokenizer" / "bpe.json", root / "tokenizer" / "bpe.json")
    monkeypatch.setattr(dalle_mini_impl, "DATA_DIR", root)
    return root


def test_demo_without_a_transformer_renders_the_reference(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["demo", "a small green square at the bottom", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["prompt"] for r in results] == ["a small green square at the bottom"]
    image = np.asarray(Image.open(out / results[0]["images"][0]).convert("RGB"))
    assert grader.grade(image, results[0]["prompt"]).match
    printed = capsys.readouterr().out
    assert "match" in printed and "generation needs the trained transformer" in printed


def test_demo_with_a_transformer_generates_16_and_keeps_4(data_dir, tmp_path, capsys):
    import torch

    from dalle_mini_impl import checkpoints
    from dalle_mini_impl.dvae import DVAE, DVAEConfig
    from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

    torch.manual_seed(0)  # tiny random models: the wiring is under test, not the pictures
    dvae_config = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
    config = TransformerConfig(text_vocab_size=ByteLevelBPE.load(data_dir / "tokenizer" / "bpe.json").vocab_size,
                               image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=2)
    checkpoints.save_model(DVAE(dvae_config), dvae_config, data_dir / "dvae", "dvae")
    checkpoints.save_model(DalleTransformer(config), config, data_dir / "transformer", "transformer")
    out = tmp_path / "out"
    prompt = "a small blue square to the left of a large red circle"
    assert cli.main(["demo", prompt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokens" in printed and "reference render" in printed and "generation needs" not in printed
    (entry,) = json.loads((out / "results.json").read_text())["results"]
    assert entry["prompt"] == prompt and len(entry["images"]) == 4 and "clip_scores" not in entry  # no CLIP here
    for name in entry["images"]:
        assert Image.open(out / name).size == (64, 64)
    assert len(list(out.glob("*_sheet.png"))) == 1
    assert (out / f"{cli._slug(prompt)}.png").is_file()  # the reference render stays beside the samples


def test_demo_outside_the_grammar_without_a_transformer_writes_nothing(data_dir, tmp_path, capsys):
    assert cli.main(["demo", "a cat on a mat", "--out", str(tmp_path / "out")]) == 0
    assert "outside the Shapes grammar" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_demo_rejects_an_empty_prompt(tmp_path, capsys):
    assert cli.main(["demo", "   ", "--out", str(tmp_path)]) == 2
    assert "empty" in capsys.readouterr().err


def test_set_overrides_are_typed_like_the_config_fields():
    from dalle_mini_impl.cli import _config_overrides
    from dalle_mini_impl.dvae import DVAEConfig

    got = _config_overrides(["dec_width=64", "res_gain=1.0", "hard=true", "lr=2e-3"], DVAEConfig)
    assert got == {"dec_width": 64, "res_gain": 1.0, "hard": True, "lr": 2e-3}
    assert _config_overrides(["res_gain=none"], DVAEConfig) == {"res_gain": None}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        _config_overrides(["no_such_field=1"], DVAEConfig)


def test_cli_sampling_defaults_are_the_package_defaults():
    from dalle_mini_impl import cli, sampling

    for argv in (["generate", "a red circle", "--out", "out"], ["evaluate"]):
        args = cli.build_parser().parse_args(argv)
        assert (args.cond_scale, args.temperature) == (sampling.CONDITION_SCALE, sampling.TEMPERATURE)


def test_the_readme_contact_sheet_is_what_make_demo_draws(tmp_path, capsys):
    """README.md shows data/demo/contact_sheet.png as the output of `make demo`: keep it true.

    After re-shipping a model, run `make demo` and copy demo_out/00_*_sheet.png there (and the
    CLIP scores into README.md).
    """
    import re
    from pathlib import Path

    from dalle_mini_impl import DATA_DIR, checkpoints

    if not (DATA_DIR / "transformer" / checkpoints.WEIGHTS_NAME).exists():
        pytest.skip("no shipped models in data/")
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    prompt = re.search(r"^PROMPT \?= (.+)$", makefile, re.M).group(1).strip()
    args = re.search(r'generate "\$\(PROMPT\)" (.+) --out demo_out', makefile).group(1).split()
    assert cli.main(["generate", prompt, *args, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    (sheet,) = tmp_path.glob("00_*_sheet.png")
    drawn = np.asarray(Image.open(sheet).convert("RGB"))
    shipped = np.asarray(Image.open(DATA_DIR / "demo" / "contact_sheet.png").convert("RGB"))
    assert drawn.shape == shipped.shape and np.array_equal(drawn, shipped)


def test_finetune_dvae_keeps_the_source_model_and_writes_a_loadable_one(tmp_path, monkeypatch, capsys):
    import shutil

    from dalle_mini_impl import DATA_DIR
    from dalle_mini_impl.dvae import load as load_dvae

    monkeypatch.setattr("dalle_mini_impl.evaluate.evaluate_reconstructions", lambda *a, **k: {})
    monkeypatch.setattr("dalle_mini_impl.evaluate.format_reconstruction_report", lambda report: "report")
    source = tmp_path / "dvae"
    shutil.copytree(DATA_DIR / "dvae", source)
    before = (source / "model.safetensors").read_bytes()
    out = tmp_path / "tuned"
    assert cli.main(["finetune-dvae", str(source), "--out", str(out), "--steps", "2", "--batch-size", "2",
                     "--images", "4", "--threads", "1"]) == 0
    assert (source / "model.safetensors").read_bytes() == before
    assert load_dvae(out, device="cpu").config == load_dvae(source, device="cpu").config
    assert json.loads((out / "training.json").read_text())["loss"] == "l1"
