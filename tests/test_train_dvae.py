"""The dVAE training loop (lesson 2): it learns, restarts dead codes, resumes exactly, stops on a NaN."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl import checkpoints, shapes
from dalle_mini_impl.dvae import DVAE, DVAEConfig, calibrate_logits_norm
from dalle_mini_impl.dvae import load as load_dvae
from dalle_mini_impl.images import to_float_images
from dalle_mini_impl.train_common import TrainingDiverged
from dalle_mini_impl.train_dvae import CALIBRATION_IMAGES, make_optimizer, train_dvae, training_images

OVERFIT_RATIO = 0.7
TINY = {"enc_width": 8, "dec_width": 8, "codebook_dim": 16, "vocab_size": 32}  # a model that runs in milliseconds


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine, 2 OpenMP threads can be 4× slower


def test_restarts_keep_more_codes_in_play(tmp_path):
    images = training_images(32, seed=0, source="train")  # Shapes: mostly white, where a plain run collapses onto few codes
    x = to_float_images(images)
    used = {}
    for every in (0, 5):
        model = train_dvae(DVAEConfig(**TINY, res_gain=None, restart_every=every), steps=40, batch_size=8, images=images,
                           out_dir=tmp_path / str(every), progress=False, log=lambda _: None, device="cpu")
        used[every] = len(model.encode(x).unique())
    assert used[5] >= used[0] + 5  # measured: 21 codes against 12


def test_tiny_model_overfits_eight_images(tmp_path):

    images = shapes.ShapesDataset("train", size=8, seed=3).images  # (8, 64, 64, 3) uint8
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (8, C, H, W)
    x = F.avg_pool2d(x, 2)  # (8, C, 32, 32): a 4× cheaper problem with the same 8×8 grid
    cfg = DVAEConfig(image_size=32, downsample=4, vocab_size=64, enc_width=16, dec_width=16, codebook_dim=32,
                     tau_anneal_frac=0.5)
    model = train_dvae(cfg, steps=300, batch_size=8, seed=0, out_dir=tmp_path, images=x, precision="fp32",
                       progress=False, checkpoint_every=1000, sample_every=1000, threads=1, log=lambda s: None)
    err = (model.reconstruct(x) - x).abs().mean().item()
    mean_image = (x - x.mean(0, keepdim=True)).abs().mean().item()  # the best input-independent guess
    assert err < OVERFIT_RATIO * mean_image, (err, mean_image)


def _tiny_run(out_dir, **kw):
    images = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    cfg = DVAEConfig(**TINY)
    return train_dvae(cfg, steps=6, batch_size=4, seed=1, out_dir=out_dir, images=images, precision="fp32",
                      progress=False, checkpoint_every=2, sample_every=1000, threads=1, log=lambda s: None, **kw)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    straight = _tiny_run(tmp_path / "a")
    _tiny_run(tmp_path / "b", until=3)  # "killed" after step 3 (last checkpoint: step 3)
    model = DVAE(DVAEConfig(**TINY))
    step, extra = checkpoints.load_training_state(
        tmp_path / "b" / checkpoints.STATE_NAME, model, make_optimizer(model), DVAEConfig(**TINY), restore_rng=False)
    assert step == 3 and extra["steps"] == 6
    resumed = _tiny_run(tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_saved_models_encode_with_the_exact_mean_of_their_own_features(tmp_path):
    # each save recomputes the logits head's running mean from the first training images, with the
    # weights saved: a lagging average of past batches would misread the argmax codes
    images = training_images(40, seed=0, source="train")
    cfg = DVAEConfig(**TINY, logits_norm="centre")
    train_dvae(cfg, steps=5, batch_size=4, seed=1, out_dir=tmp_path, images=images, precision="fp32",
               progress=False, checkpoint_every=5, sample_every=1000, threads=1, log=lambda s: None)
    model = load_dvae(tmp_path)
    assert calibrate_logits_norm(model, to_float_images(images[:CALIBRATION_IMAGES])) < 1e-5


def test_a_second_run_in_the_same_folder_needs_resume(tmp_path):
    _tiny_run(tmp_path, until=2)
    with pytest.raises(checkpoints.CheckpointError, match="resume"):
        _tiny_run(tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    images = np.random.default_rng(0).random((16, 3, 64, 64)).astype(np.float32)
    images[:, 0, 0, 0] = np.nan  # every batch contains a NaN pixel
    _tiny_run(tmp_path, until=2)
    before = (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes()
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_dvae(DVAEConfig(**TINY), steps=6, batch_size=4, seed=1, out_dir=tmp_path, images=torch.from_numpy(images),
                   precision="fp32", progress=False, checkpoint_every=2, resume=True, threads=1, log=lambda s: None)
    assert (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes() == before
    load_dvae(tmp_path, device="cpu")  # still loadable


def test_finetuning_the_decoder_on_hard_codes_lowers_the_round_trip_error_and_resumes_exactly(tmp_path):
    from dalle_mini_impl.train_dvae import finetune_decoder

    images = shapes.ShapesDataset("train", size=16, seed=3).images
    base = train_dvae(DVAEConfig(**TINY), steps=30, batch_size=8, images=images, out_dir=tmp_path / "base",
                      progress=False, log=lambda _: None, device="cpu", threads=1)
    x = to_float_images(images)
    before = (base.reconstruct(x) - x).abs().mean().item()
    kw = dict(steps=40, batch_size=8, images=images, loss="l1", lr=3e-3, checkpoint_every=20, progress=False,
              log=lambda _: None, device="cpu", threads=1)
    tuned = finetune_decoder(tmp_path / "base", tmp_path / "tuned", **kw)
    after = (tuned.reconstruct(x) - x).abs().mean().item()
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(a, b) for (n, a), b in zip(base.state_dict().items(), tuned.state_dict().values())
               if n.startswith("encoder."))  # the encoder, and so the codes, unchanged
    finetune_decoder(tmp_path / "base", tmp_path / "resumed", until=20, **kw)
    resumed = finetune_decoder(tmp_path / "base", tmp_path / "resumed", resume=True, **kw)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), resumed.state_dict().values()))
    assert load_dvae(tmp_path / "tuned", device="cpu").config == base.config
    with pytest.raises(ValueError, match="loss must be one of"):
        finetune_decoder(tmp_path / "base", tmp_path / "x", loss="huber", images=images, progress=False)
