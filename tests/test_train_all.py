"""train-all: the four stages end to end on a temp folder of your own images, skipped when finished, and the plan
that reproduces the shipped models."""

import dataclasses
import json

import pytest
import torch
from _tiny import TINY_PLAN, write_image_folder
from safetensors.torch import load_file

from dalle_mini_impl import DATA_DIR, checkpoints, cli, pipeline
from dalle_mini_impl.clip import CLIPConfig
from dalle_mini_impl.dvae import DVAEConfig
from dalle_mini_impl.folder_data import FolderDataset
from dalle_mini_impl.train_all import PLANS, SPECIAL_TOKENS, STAGES, dvae_config, open_run, stage_finished, train_all
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.checkpoints import training_info


def _weights(run_dir):
    return {f"{s}/{k}": v for s in ("dvae", "transformer", "clip")
            for k, v in load_file(str(run_dir / s / checkpoints.WEIGHTS_NAME)).items()}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """30 captioned images in nested folders (png, jpg, webp, jpeg; 80×64, so centre-cropped), trained end to end."""
    root = tmp_path_factory.mktemp("own")
    data = write_image_folder(root / "images", n=30)
    out = root / "run"
    seconds = train_all(out, data=data, plan=TINY_PLAN, cache_dir=root / "cache", progress=False, log=lambda _: None)
    return data, out, root / "cache", seconds


def test_a_tiny_run_on_your_own_images_end_to_end(own_run, tmp_path, capsys):
    data, out, cache, seconds = own_run
    assert list(seconds) == list(STAGES) and all(t > 0 for t in seconds.values())
    run = open_run(out, data, TINY_PLAN, progress=False, log=lambda _: None)
    assert all(stage_finished(run, stage) for stage in STAGES)
    # the tokenizer learned the captions' words: "picture" (only in the folder's captions) is one token
    tok = load_tokenizer(out / "tokenizer" / "bpe.json")
    assert tok.special_tokens == SPECIAL_TOKENS and len(tok.encode(" picture")) == 1
    # the codes were encoded once into the cache, and the transformer knows which data it learned
    dataset = FolderDataset(data, image_size=dvae_config(TINY_PLAN).image_size)  # as train_all read it
    assert len(list(cache.glob(f"codes_folder_{dataset.fingerprint[:16]}_*.safetensors"))) == 1
    assert training_info(out / "transformer")["data_sha256"] == dataset.fingerprint
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == "folder" and info["images"] == 30 and set(info["seconds"]) == set(STAGES)
    # the layout load_models reads: generate --models RUN_DIR draws, reranks with the new CLIP, writes results.json
    models = pipeline.load_models(out, device="cpu")
    assert models.clip is not None and models.clip.config.text_len == TINY_PLAN.transformer_config["text_len"]
    gen = tmp_path / "gen"
    assert cli.main(["generate", "a red circle", "the same picture, number 3", "--models", str(out),
                     "--candidates", "3", "--keep", "2", "--out", str(gen)]) == 0
    results = json.loads((gen / "results.json").read_text())["results"]
    assert [len(r["images"]) for r in results] == [2, 2] and all(len(r["clip_scores"]) == 2 for r in results)


def test_a_finished_run_is_skipped_and_unchanged(own_run):
    data, out, cache, _ = own_run
    before = _weights(out)
    messages = []
    seconds = train_all(out, data=data, plan=TINY_PLAN, cache_dir=cache, progress=False, log=messages.append)
    assert seconds == {stage: 0.0 for stage in STAGES}
    assert sum("finished earlier" in m for m in messages) == 4
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_run_folder_refuses_other_data_or_another_plan(own_run, tmp_path):
    data, out, cache, _ = own_run
    longer = dataclasses.replace(TINY_PLAN, dvae_steps=7)
    with pytest.raises(checkpoints.CheckpointError, match=r"run\.json: .*plan\.dvae_steps: saved 6 vs now 7.*--out"):
        train_all(out, data=data, plan=longer, cache_dir=cache, progress=False, log=lambda _: None)
    with pytest.raises(checkpoints.CheckpointError, match="data: saved 'folder' vs now 'shapes'"):
        train_all(out, plan=TINY_PLAN, cache_dir=cache, progress=False, log=lambda _: None)
    other = write_image_folder(tmp_path / "other", n=6, seed=1)
    with pytest.raises(checkpoints.CheckpointError, match="data_sha256: saved"):
        train_all(out, data=other, plan=TINY_PLAN, cache_dir=cache, progress=False, log=lambda _: None)


def test_the_cpu_plan_is_the_commands_of_the_shipped_models():
    plan, parse = PLANS["cpu"], cli.build_parser().parse_args
    tokenizer, dvae, transformer, clip = (parse([c]) for c in ("train-tokenizer", "train-dvae", "train-transformer",
                                                             "train-clip"))
    assert (plan.seed, plan.preset) == (0, "cpu")
    assert (plan.tokenizer_captions, plan.vocab_size) == (tokenizer.captions, tokenizer.vocab_size) == (50_000, 515)
    assert (plan.dvae_steps, plan.dvae_batch_size, plan.dvae_images) == (dvae.steps, dvae.batch_size, dvae.images)
    assert (plan.transformer_steps, plan.transformer_batch_size, plan.transformer_images) == (
        transformer.steps, transformer.batch_size, transformer.images)
    assert plan.transformer_config == {} and (transformer.lr, transformer.set) == (None, [])  # the preset's own lr
    assert (plan.clip_steps, plan.clip_batch_size) == (clip.steps, clip.batch_size)
    # data/dvae/README.md: --steps 3500 --batch-size 32; data/transformer/README.md: --steps 2400 --batch-size 64;
    # data/clip/README.md: --steps 1500 --batch-size 128
    assert (plan.dvae_steps, plan.dvae_batch_size, plan.clip_steps, plan.clip_batch_size) == (3500, 32, 1500, 128)
    assert (plan.transformer_steps, plan.transformer_batch_size) == (2400, 64)
    assert training_info(DATA_DIR / "transformer")["steps"] == plan.transformer_steps
    shipped_dvae = checkpoints.load_config(DATA_DIR / "dvae", DVAEConfig, "dvae")
    shipped_clip = checkpoints.load_config(DATA_DIR / "clip", CLIPConfig, "clip")
    assert DVAEConfig.preset(plan.preset, **plan.dvae_config) == shipped_dvae
    assert CLIPConfig.preset(plan.preset, **plan.clip_config) == shipped_clip


def test_shapes_tokenizer_stage_reproduces_the_shipped_tokenizer(tmp_path):
    assert train_all(tmp_path, plan="cpu", stages=("tokenizer",), progress=False, log=lambda _: None)["tokenizer"] > 0
    assert json.loads((tmp_path / "tokenizer" / "bpe.json").read_text()) == json.loads(
        (DATA_DIR / "tokenizer" / "bpe.json").read_text())
    assert json.loads((tmp_path / "run.json").read_text())["data"] == "shapes"
    assert SPECIAL_TOKENS == cli.SPECIAL_TOKENS
