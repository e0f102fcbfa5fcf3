"""generate: K images per prompt, repeatable, reranked when CLIP is given; the generate CLI and results.json."""

import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_mini_impl import DATA_DIR, checkpoints, cli, images, pipeline, transformer
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
TINY = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)
PROMPTS = ["a large red circle in the top left", "a small blue square to the left of a green cross"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    dvae = DVAE(DVAEConfig(**TINY_DVAE)).eval()
    transformer = DalleTransformer(TransformerConfig(text_vocab_size=tokenizer.vocab_size, **TINY)).eval()
    return pipeline.Models(tokenizer, dvae, transformer)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, models):
    """A folder laid out like data/, holding the tiny models."""
    root = tmp_path_factory.mktemp("models")
    (root / "tokenizer").mkdir()
    shutil.copy(DATA_DIR / "tokenizer" / "bpe.json", root / "tokenizer" / "bpe.json")
    checkpoints.save_model(models.dvae, models.dvae.config, root / "dvae", "dvae")
    checkpoints.save_model(models.transformer, models.transformer.config, root / "transformer", "transformer")
    return root


def run(models, prompts=PROMPTS, **kwargs):
    values = dict(candidates=4, keep=2, seed=0, device="cpu")
    return pipeline.generate(prompts, models.transformer, models.dvae, models.tokenizer, **{**values, **kwargs})


def fake_clip_module():
    """Stands in for ``dalle_mini_impl.clip``: scores an image by its mean brightness."""

    def rerank(model, tokenizer, prompt, images):
        scores = images.reshape(len(images), -1).mean(axis=1).astype(np.float32) / 255  # (N,)
        order = np.argsort(-scores, kind="stable")
        return images[order], scores[order]

    return types.SimpleNamespace(rerank=rerank)


# --- generate -------------------------------------------------------------------------------


def test_generate_keeps_k_images_per_prompt(models):
    results = run(models)
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        assert r.images.shape == (2, 64, 64, 3) and r.images.dtype == np.uint8
        assert r.scores is None


def test_generate_is_repeatable_and_seeded(models):
    a, b, c = run(models), run(models), run(models, seed=1)
    assert all(np.array_equal(x.images, y.images) for x, y in zip(a, b))
    assert not np.array_equal(a[0].images, c[0].images)
    alone = run(models, prompts=PROMPTS[1])  # a prompt's images do not depend on the other prompts
    assert np.array_equal(alone[0].images, a[1].images)
    wider = run(models, prompts=PROMPTS[0], keep=4)  # without CLIP: the first K in sampling order
    assert np.array_equal(wider[0].images[:2], a[0].images)


def test_generate_reranks_with_clip(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "dalle_mini_impl.clip", fake_clip_module())
    plain = run(models, prompts=PROMPTS[0], keep=4)[0]
    (best,) = run(models, prompts=PROMPTS[0], keep=2, clip_model=torch.nn.Identity())
    brightness = plain.images.reshape(4, -1).mean(axis=1) / 255
    assert best.scores.shape == (2,) and best.scores[0] >= best.scores[1]
    assert np.allclose(best.scores, np.sort(brightness)[::-1][:2])
    assert np.array_equal(best.images[0], plain.images[int(np.argmax(brightness))])


def test_generate_refuses_bad_input(models):
    with pytest.raises(ValueError, match="empty"):
        run(models, prompts=["a red circle", "   "])
    with pytest.raises(ValueError, match="no prompts"):
        run(models, prompts=[])
    with pytest.raises(ValueError, match="keep"):
        run(models, keep=5)
    with pytest.raises(ValueError, match="candidates"):
        run(models, candidates=0)


def test_overlong_prompt_is_truncated_with_a_warning(models):
    with pytest.warns(UserWarning, match="truncated"):
        (result,) = run(models, prompts=["a large red circle " * 20])
    assert result.images.shape == (2, 64, 64, 3)


def test_contact_sheet_layout():
    four = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    assert images.contact_sheet(four).shape == (64, 4 * 64 + 3 * 2, 3)
    assert images.contact_sheet(four, columns=2).shape == (2 * 64 + 2, 2 * 64 + 2, 3)


# --- loading --------------------------------------------------------------------------------


def test_load_models_names_the_missing_file_and_the_command(models_dir, tmp_path):
    loaded = pipeline.load_models(models_dir, device="cpu")
    assert loaded.clip is None and loaded.transformer.config == pipeline.load_models(models_dir).transformer.config
    partial = tmp_path / "partial"
    shutil.copytree(models_dir, partial)
    shutil.rmtree(partial / "transformer")
    with pytest.raises(checkpoints.CheckpointError, match=r"transformer.*train-transformer"):
        pipeline.load_models(partial, device="cpu")
    (partial / "tokenizer" / "bpe.json").unlink()
    with pytest.raises(checkpoints.CheckpointError, match=r"bpe\.json.*train-tokenizer"):
        pipeline.load_models(partial, device="cpu")


def test_load_models_refuses_a_transformer_for_another_dvae(models_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(models_dir, other)
    config = DVAEConfig(**{**TINY_DVAE, "vocab_size": 64})
    checkpoints.save_model(DVAE(config), config, other / "dvae", "dvae")
    with pytest.raises(checkpoints.CheckpointError, match="32 image codes but the dVAE has 64"):
        pipeline.load_models(other, device="cpu")


# --- the command line -----------------------------------------------------------------------


def test_generate_cli_writes_results_json(models_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["generate", *PROMPTS, "--candidates", "3", "--keep", "2", "--seed", "0", "--out", str(out),
            "--models", str(models_dir), "--top-k", "8"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["results"]
    assert [e["prompt"] for e in results["results"]] == PROMPTS
    for entry in results["results"]:
        assert set(entry) == {"prompt", "images"}  # no CLIP model: no scores
        assert len(entry["images"]) == 2
        for name in entry["images"]:
            assert not name.startswith("/") and Image.open(out / name).size == (64, 64)
    assert len(list(out.glob("*_sheet.png"))) == 2
    assert "results.json" in capsys.readouterr().out
    first = (out / results["results"][0]["images"][0]).read_bytes()
    assert cli.main([*argv, "--overwrite"]) == 0 and (out / results["results"][0]["images"][0]).read_bytes() == first  # same seed


def test_generate_cli_with_clip_writes_scores(models_dir, tmp_path, monkeypatch):
    with_clip = tmp_path / "with_clip"
    shutil.copytree(models_dir, with_clip)
    (with_clip / "clip").mkdir()
    monkeypatch.setattr(pipeline, "load_clip", lambda path, device=None: torch.nn.Identity())
    monkeypatch.setitem(sys.modules, "dalle_mini_impl.clip", fake_clip_module())
    out = tmp_path / "out"
    assert cli.main(["generate", PROMPTS[0], "--candidates", "3", "--keep", "2", "--out", str(out),
                     "--models", str(with_clip)]) == 0
    (entry,) = json.loads((out / "results.json").read_text())["results"]
    assert set(entry) == {"prompt", "images", "clip_scores"}
    scores = entry["clip_scores"]
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] >= scores[1]


def test_generate_cli_reranks_with_a_real_clip(models_dir, tmp_path):
    from dalle_mini_impl.clip import CLIP, CLIPConfig

    with_clip = tmp_path / "with_real_clip"
    shutil.copytree(models_dir, with_clip)
    torch.manual_seed(0)
    config = CLIPConfig(text_vocab_size=356, d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1,
                        image_layers=1)
    checkpoints.save_model(CLIP(config).eval(), config, with_clip / "clip", "clip")
    out, plain = tmp_path / "out", tmp_path / "plain"
    argv = [PROMPTS[0], "--candidates", "3", "--keep", "3", "--models", str(with_clip)]
    assert cli.main(["generate", *argv, "--out", str(out)]) == 0
    assert cli.main(["generate", *argv, "--out", str(plain), "--no-clip"]) == 0
    (entry,) = json.loads((out / "results.json").read_text())["results"]
    scores = entry["clip_scores"]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    (unranked,) = json.loads((plain / "results.json").read_text())["results"]
    assert "clip_scores" not in unranked
    reranked = sorted((out / name).read_bytes() for name in entry["images"])  # the same candidates, reordered
    assert reranked == sorted((plain / name).read_bytes() for name in unranked["images"])


@pytest.mark.parametrize("bad", [
    ["--candidates", "0"],
    ["--candidates", "2", "--keep", "3"],
    ["--temperature", "0"],
    ["--top-p", "1.5"],
    ["--top-k", "-1"],
], ids=["no-candidates", "keep-above-candidates", "zero-temperature", "top-p", "top-k"])
def test_generate_cli_bad_arguments_exit_2_and_write_nothing(models_dir, tmp_path, bad, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "a red circle", "--out", str(out), "--models", str(models_dir), *bad])
    assert exc.value.code == 2 and not out.exists()
    assert "error" in capsys.readouterr().err


def test_generate_cli_unwritable_out_exits_2(models_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "a red circle", "--out", str(blocker / "sub"), "--models", str(models_dir)])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "  ", "--out", str(tmp_path / "out"), "--models", str(models_dir)])
    assert exc.value.code == 2 and not (tmp_path / "out").exists()


def test_generate_cli_missing_models_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["generate", "a red circle", "--out", str(out), "--models", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "bpe.json" in err and "train-tokenizer" in err and not out.exists()


def test_train_transformer_cli_runs_and_resumes(models_dir, tmp_path, monkeypatch, capsys):
    from dalle_mini_impl import train_transformer as tt

    monkeypatch.setattr(tt, "CACHE_DIR", tmp_path / "cache")  # keep the repository's .cache/ out of tests
    presets = []

    def tiny_preset(tokenizer, dvae, preset="cpu", **overrides):  # the wiring is under test, not the preset size
        presets.append(preset)
        return TransformerConfig(text_vocab_size=tokenizer.vocab_size, **{**TINY, **overrides})

    monkeypatch.setattr(transformer, "config_for", tiny_preset)
    out = tmp_path / "run"
    argv = ["train-transformer", "--preset", "gpu", "--steps", "3", "--batch-size", "2", "--images", "8",
            "--dvae", str(models_dir / "dvae"), "--out", str(out), "--eval-prompts", "2", "--threads", "1",
            "--lr", "2e-3", "--set", "warmup_frac=0.25"]
    assert cli.main([*argv, "--until", "2"]) == 0
    assert cli.main(argv) == 2 and "--resume" in capsys.readouterr().err  # a run exists: refuse to overwrite it
    assert cli.main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed" in printed and "graded match of samples" in printed
    assert presets == ["gpu"] * 3 and transformer.load(out, device="cpu").config.d_model == TINY["d_model"]
    assert (transformer.load(out, device="cpu").config.lr, transformer.load(out, device="cpu").config.warmup_frac) == (
        2e-3, 0.25)  # --lr and --set reach the config, saved with the model
    assert cli.main([*argv[:-2], "--set", "warmup_frac=2"]) == 2  # refused before any work
    assert "warmup_frac must be between 0 and 1" in capsys.readouterr().err
    assert checkpoints.training_info(out)["step"] == 3 and (out / "samples" / "step_000003.png").is_file()


def test_a_transformer_fits_any_decoder_behind_the_encoder_it_learned():
    torch.manual_seed(0)
    dvae = DVAE(DVAEConfig(**TINY_DVAE))
    record = {"dvae_encoder_sha256": checkpoints.codes_hash(dvae)}
    with torch.no_grad():
        dvae.decoder.codebook.weight.add_(1.0)  # a fine-tuned decoder: the same codes
    assert pipeline.trained_on_these_codes(record, dvae)
    old_record = {"dvae_sha256": checkpoints.weights_hash(dvae)}  # older records hash the whole dVAE
    assert pipeline.trained_on_these_codes(old_record, dvae)
    with torch.no_grad():
        next(dvae.encoder.parameters()).add_(1.0)  # another encoder: other codes
    assert not pipeline.trained_on_these_codes(record, dvae)
    assert not pipeline.trained_on_these_codes(old_record, dvae)
    assert pipeline.trained_on_these_codes({}, dvae)  # nothing recorded: nothing to check


def test_load_models_warns_when_the_transformer_learned_other_codes(models_dir):
    info = checkpoints.training_info(models_dir / "transformer")
    checkpoints.write_training_info(models_dir / "transformer", {**info, "dvae_encoder_sha256": "0" * 64})
    try:
        with pytest.warns(UserWarning, match="trained on the codes of another dVAE"):
            pipeline.load_models(models_dir, device="cpu")
    finally:
        checkpoints.write_training_info(models_dir / "transformer", info)
