"""The CLIP training loop (lesson 4): fresh batches, exact resume, clear errors, a NaN stops it."""

import json

import pytest
import torch

from dalle_mini_impl import checkpoints, shapes
from dalle_mini_impl import train_clip as tc
from dalle_mini_impl.clip import CLIP, CLIPConfig
from dalle_mini_impl.clip import load as load_clip
from dalle_mini_impl.train_common import TrainingDiverged

TINY = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)  # runs in milliseconds


def _tiny_run(out_dir, **kw):
    return tc.train_clip(CLIPConfig(**TINY), steps=6, batch_size=8, seed=1, out_dir=out_dir, checkpoint_every=2,
                         eval_every=0, progress=False, threads=1, log=lambda s: None, **kw)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    straight = _tiny_run(tmp_path / "a")
    _tiny_run(tmp_path / "b", until=3)  # "killed" after step 3
    cfg = CLIPConfig(**TINY)
    model = CLIP(cfg)
    step, extra = checkpoints.load_training_state(tmp_path / "b" / checkpoints.STATE_NAME, model,
                                                  tc.make_optimizer(model, cfg), cfg, restore_rng=False)
    assert step == 3 and extra["steps"] == 6
    resumed = _tiny_run(tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_clip(tmp_path / "b", device="cpu")
    assert loaded.config == cfg and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                              straight.state_dict().values()))


def test_a_second_run_in_the_same_folder_needs_resume(tmp_path):
    _tiny_run(tmp_path, until=2)
    with pytest.raises(checkpoints.CheckpointError, match="resume"):
        _tiny_run(tmp_path)


def test_a_checkpoint_from_another_config_gives_a_clear_error(tmp_path):
    _tiny_run(tmp_path, until=2)
    other = CLIPConfig(**{**TINY, "embed_dim": 24})
    with pytest.raises(checkpoints.CheckpointError, match="another config.*embed_dim: saved 16 vs now 24"):
        tc.train_clip(other, steps=6, batch_size=8, seed=1, out_dir=tmp_path, resume=True, eval_every=0,
                      progress=False, threads=1, log=lambda s: None)
    checkpoints.save_config(other, tmp_path, "clip")  # config.json now disagrees with the weights
    with pytest.raises(checkpoints.CheckpointError, match=r"text_proj.weight.*\(16, 32\).*\(24, 32\)"):
        load_clip(tmp_path, device="cpu")
    with pytest.raises(checkpoints.CheckpointError, match="expected model_type 'clip', found 'dvae'"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "dvae"}))
        load_clip(tmp_path, device="cpu")
    with pytest.raises(checkpoints.CheckpointError, match="no such folder"):
        load_clip(tmp_path / "missing", device="cpu")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _tiny_run(tmp_path, until=2)
    before = (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes()
    # a broken positives mask (no positive at all) makes the targets 0/0: a NaN loss
    monkeypatch.setattr(tc, "same_caption", lambda ids: torch.zeros(len(ids), len(ids), dtype=torch.bool))
    with pytest.raises(TrainingDiverged, match="last good checkpoint.*step 2"):
        _tiny_run(tmp_path, resume=True)
    assert (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes() == before


def test_training_batches_are_a_pure_function_of_seed_and_step():
    a = tc.training_batch(3, 4, seed=5)
    assert [s.caption for s in a] == [s.caption for s in shapes.make_scenes("train", 16, seed=5)[12:]]
    assert tc.lr_at(0, 100, CLIPConfig()) < tc.lr_at(4, 100, CLIPConfig()) == pytest.approx(CLIPConfig().lr)
    assert tc.lr_at(99, 100, CLIPConfig()) == pytest.approx(CLIPConfig().lr * CLIPConfig().lr_end_frac, rel=1e-2)


def test_cli_parses_train_clip():
    from dalle_mini_impl.cli import build_parser, run_train_clip

    args = build_parser().parse_args(["train-clip", "--preset", "gpu", "--steps", "7", "--batch-size", "4",
                                      "--seed", "2", "--out", "x", "--resume"])
    assert (args.preset, args.steps, args.batch_size, args.seed, str(args.out), args.resume) == ("gpu", 7, 4, 2, "x", True)
    assert args.func is run_train_clip


def test_hard_negatives_train_and_resume_exactly(tmp_path):
    config = CLIPConfig(**TINY, hard_negatives=True)

    def run(out, **kw):
        return tc.train_clip(config, steps=4, batch_size=8, seed=2, out_dir=out, checkpoint_every=2, eval_every=0,
                             progress=False, threads=1, log=lambda s: None, **kw)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", until=2)
    resumed = run(tmp_path / "b", resume=True)
    plain = tc.train_clip(CLIPConfig(**TINY), steps=4, batch_size=8, seed=2, out_dir=tmp_path / "c", eval_every=0,
                          progress=False, threads=1, log=lambda s: None)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), plain.state_dict().values()))
