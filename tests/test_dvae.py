"""The discrete VAE: relaxation, schedules, likelihood, loss reduction, shapes, training, and the shipped model."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl import DATA_DIR, checkpoints, grader, shapes
from dalle_mini_impl.dvae import (
    DVAE,
    DVAEConfig,
    calibrate_logits_norm,
    code_histogram,
    code_locations,
    codebook_perplexity,
    dead_codes,
    gumbel_softmax,
    gumbel_softmax_samples,
    gumbel_softmax_sharpness,
    histogram_perplexity,
    kl_to_uniform,
    kl_weight_at,
    logit_laplace_log_prob,
    most_colourful_code,
    restart_dead_codes,
    lr_at,
    map_pixels,
    schedules,
    tau_at,
    unmap_pixels,
    usage_kl_to_uniform,
)
from dalle_mini_impl.dvae import load as load_dvae
from dalle_mini_impl.evaluate import caption_round_trip_rate, evaluate_reconstructions
from dalle_mini_impl.evaluate import format_reconstruction_report as format_report
from dalle_mini_impl.images import to_float_images, to_uint8_images
from dalle_mini_impl.train_common import cosine as cosine_schedule
from dalle_mini_impl.train_dvae import make_optimizer

TINY = {"enc_width": 8, "dec_width": 8, "codebook_dim": 16, "vocab_size": 32}  # a model that runs in milliseconds


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine, 2 OpenMP threads can be 4× slower


# --- the relaxation ---------------------------------------------------------------------------


def test_gumbel_argmax_frequencies_match_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40_000
    y = gumbel_softmax(logits.expand(n, -1), tau=1.0, dim=-1)  # (n, 5)
    freq = torch.bincount(y.argmax(-1), minlength=5).float() / n
    p = logits.softmax(-1)
    # binomial standard error ≈ sqrt(p(1-p)/n) <= 0.0025; allow 4 sigma
    assert torch.allclose(freq, p, atol=0.01), (freq, p)
    assert torch.allclose(y.sum(-1), torch.ones(n), atol=1e-5)


def test_low_temperature_is_nearly_one_hot():
    torch.manual_seed(0)
    y = gumbel_softmax(torch.randn(1000, 16), tau=1 / 16, dim=-1)
    assert y.max(-1).values.mean() > 0.9  # most samples put almost all their mass on one code


def test_hard_gives_one_hot_and_gradients_flow():
    torch.manual_seed(0)
    logits = torch.randn(4, 8, 3, 3, requires_grad=True)  # (B, K, h, w)
    y = gumbel_softmax(logits, tau=0.5, hard=True, dim=1)
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y.detach().sum(1), torch.ones(4, 3, 3))
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_seeded_samples_are_the_same_draws_at_every_temperature():
    logits = torch.tensor([1.0, 2.0, 0.5, 0.0])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    warm, cold = gumbel_softmax_samples(logits, 2.0, 5, seed=0), gumbel_softmax_samples(logits, 0.05, 5, seed=0)
    assert torch.equal(torch.rand(3), expected)  # the global random state is left alone
    assert warm.shape == (5, 4) and torch.equal(warm.argmax(-1), cold.argmax(-1))
    assert (cold.max(-1).values > warm.max(-1).values).all()
    assert torch.equal(gumbel_softmax_samples(logits, 2.0, 5, seed=0), warm)
    sharp = gumbel_softmax_sharpness(torch.zeros(4), [0.05, 1.0, 100.0], n=500)
    assert sharp[0] > 0.95 and sharp[0] > sharp[1] > sharp[2] and sharp[2] == pytest.approx(0.25, abs=0.01)


# --- schedules --------------------------------------------------------------------------------


def test_schedule_end_points():
    cfg = DVAEConfig()
    steps = 1000
    assert tau_at(0, steps, cfg) == pytest.approx(1.0)
    assert tau_at(round(cfg.tau_anneal_frac * steps), steps, cfg) == pytest.approx(1 / 16)
    assert tau_at(steps, steps, cfg) == pytest.approx(1 / 16)
    assert kl_weight_at(0, steps, cfg) == pytest.approx(0.0)
    assert kl_weight_at(steps, steps, cfg) == pytest.approx(6.6)
    assert lr_at(steps, steps, cfg) == pytest.approx(cfg.lr * cfg.lr_end_frac)
    assert max(lr_at(s, steps, cfg) for s in range(steps)) == pytest.approx(cfg.lr)
    assert cosine_schedule(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    curves = schedules(steps, cfg)
    assert all(a >= b for a, b in zip(curves["tau"], curves["tau"][1:]))  # τ only goes down
    assert all(a <= b for a, b in zip(curves["kl_weight"], curves["kl_weight"][1:]))  # β only goes up
    assert len(curves["lr"]) == steps


# --- likelihood -------------------------------------------------------------------------------


def test_pixel_map_round_trip():
    x = torch.rand(2, 3, 8, 8)
    m = map_pixels(x, 0.1)
    assert m.min() >= 0.1 and m.max() <= 0.9
    assert torch.allclose(unmap_pixels(m, 0.1), x, atol=1e-6)
    assert torch.allclose(map_pixels(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.1, 0.5, 0.9]))


def test_logit_laplace_matches_its_formula():
    torch.manual_seed(0)
    x = map_pixels(torch.rand(200).double())
    mu, log_b = torch.randn(200).double(), torch.randn(200).double() * 0.5
    b = log_b.exp()
    direct = [
        math.log(1 / (2 * bi * xi * (1 - xi)) * math.exp(-abs(math.log(xi / (1 - xi)) - mi) / bi))
        for xi, mi, bi in zip(x.tolist(), mu.tolist(), b.tolist())
    ]
    assert torch.allclose(logit_laplace_log_prob(x, mu, log_b), torch.tensor(direct, dtype=torch.float64), atol=1e-9)


def test_logit_laplace_integrates_to_one():
    x = torch.linspace(1e-6, 1 - 1e-6, 2_000_001, dtype=torch.float64)
    p = logit_laplace_log_prob(x, torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.5, dtype=torch.float64)).exp()
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=2e-3)


# --- the KL term and its reduction ------------------------------------------------------------


def test_kl_to_uniform_values():
    K = 16
    assert torch.allclose(kl_to_uniform(torch.zeros(3, K, 2, 2)), torch.zeros(3), atol=1e-5)  # uniform: 0
    one_hot = torch.full((1, K, 2, 2), -1e4)
    one_hot[:, 5] = 0.0
    assert kl_to_uniform(one_hot).item() == pytest.approx(4 * math.log(K), rel=1e-5)  # ln K per cell, 4 cells
    logits = torch.randn(2, K, 3, 3)
    q = logits.softmax(1)
    ref = F.kl_div(torch.full_like(q, -math.log(K)), q, reduction="none").sum((1, 2, 3))  # (B,)
    assert torch.allclose(kl_to_uniform(logits), ref, atol=1e-5)


def test_usage_kl_rewards_many_codes_across_cells():
    K = 16
    one_code = torch.full((2, K, 2, 2), -1e4)
    one_code[:, 3] = 0.0  # every cell confidently picks code 3
    many_codes = torch.full((4, K, 2, 2), -1e4)
    for i in range(16):  # 16 cells, each confidently picking a different code
        many_codes[i // 4, i, (i % 4) // 2, i % 2] = 0.0
    assert usage_kl_to_uniform(one_code).item() == pytest.approx(math.log(K), rel=1e-5)
    assert usage_kl_to_uniform(many_codes).item() == pytest.approx(0.0, abs=1e-5)
    assert kl_to_uniform(one_code).mean().item() == pytest.approx(kl_to_uniform(many_codes).mean().item(), rel=1e-5)


def test_kl_reduction_is_per_pixel_like_the_reconstruction():
    """The loss is (Σ_pixels NLL + β Σ_cells KL) / (H·W·C), averaged over the batch."""
    torch.manual_seed(0)
    cfg = DVAEConfig(**TINY)
    model = DVAE(cfg)
    x = torch.rand(4, 3, 64, 64)
    out = model(x, tau=1.0, kl_weight=6.6)
    per_image_kl = kl_to_uniform(out.logits)  # (B,)
    assert out.kl.item() == pytest.approx(per_image_kl.mean().item() / (64 * 64 * 3), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.recon.item() + 6.6 * out.kl.item(), rel=1e-5)
    # batch-size independent: the same images twice give the same KL term (a sum over the batch would double it)
    out2 = model(torch.cat([x, x]), tau=1.0, kl_weight=6.6)
    assert out2.kl.item() == pytest.approx(out.kl.item(), rel=1e-4)


# --- the model --------------------------------------------------------------------------------


def test_encode_decode_shapes_and_ranges():
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY)).eval()
    x = torch.rand(3, 3, 64, 64)
    codes = model.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 32
    y = model.decode(codes)
    assert y.shape == (3, 3, 64, 64) and y.min() >= 0 and y.max() <= 1
    out = model(x, tau=1.0)
    assert out.logits.shape == (3, 32, 8, 8) and out.x_rec.shape == x.shape


def test_decode_lookup_equals_one_hot_through_the_codebook_conv():
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY)).eval()
    codes = torch.randint(0, 32, (2, 8, 8))
    one_hot = F.one_hot(codes, 32).permute(0, 3, 1, 2).float()  # (B, K, h, w)
    mu = model.decoder(one_hot)[:, :3]
    assert torch.allclose(model.decode(codes), unmap_pixels(torch.sigmoid(mu)), atol=1e-5)


def test_grid_and_codebook_are_configurable():
    model = DVAE(DVAEConfig(image_size=32, downsample=4, vocab_size=64, enc_width=8, dec_width=8, codebook_dim=16))
    assert model.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8)
    assert model.decode(torch.zeros(1, 8, 8, dtype=torch.long)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="power of 2"):
        DVAEConfig(downsample=6)
    assert DVAEConfig.preset("gpu").enc_width > DVAEConfig.preset("cpu").enc_width


def test_centre_subtracts_the_batch_mean_and_encodes_with_the_running_mean():
    from dalle_mini_impl.dvae import Centre

    centre = Centre(2, momentum=0.5)
    x = torch.tensor([1.0, 3.0])[None, :, None, None] + torch.randn(4, 2, 3, 3) * 0.1
    out = centre(x)  # training mode: the batch's own mean
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-6)
    for _ in range(30):
        centre(x)
    centre.eval()  # the running mean has converged to the batch's: eval gives the same numbers
    assert torch.allclose(centre(x), out, atol=1e-5)


@pytest.mark.parametrize("norm", ["centre", "batch"])
def test_calibrated_eval_mode_picks_the_codes_training_picks(norm):
    # encode runs in eval mode, with the logits head's running statistics; a training pass uses the
    # batch's own. Calibrated on the same images, the two read the same codes.
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY, logit_init_scale=1.0, logits_norm=norm))
    x = to_float_images(shapes.render_batch(shapes.make_scenes("train", 16, 0)))
    model.train()
    with torch.no_grad():
        train_codes = model.encoder(map_pixels(x)).argmax(1)  # (B, h, w), with the batch's statistics
    model.eval()
    assert (model.encode(x) != train_codes).float().mean() > 0.5  # the running statistics after one batch
    assert calibrate_logits_norm(model, x, batch_size=5) > 0.1  # in batches: the statistics of all 16 at once
    assert not model.training  # the mode it was in
    agree = (model.encode(x) == train_codes).float().mean()
    assert agree == 1.0 if norm == "centre" else agree > 0.99  # a BatchNorm stores the unbiased variance
    assert calibrate_logits_norm(model, x) < 1e-5  # already exact
    assert calibrate_logits_norm(DVAE(DVAEConfig(**TINY, logits_norm="none")), x) == 0.0


def test_logits_norm_reads_older_configs():
    assert DVAEConfig(logits_norm=True).logits_norm == "batch"
    assert DVAEConfig(logits_norm=False).logits_norm == "none"
    assert checkpoints.config_problems(DVAEConfig, {"logits_norm": True}) == []
    with pytest.raises(ValueError, match="centre, batch, none"):
        DVAEConfig(logits_norm="layer")
    for norm in ("centre", "batch", "none"):
        model = DVAE(DVAEConfig(**TINY, logits_norm=norm))
        assert model.encode(torch.rand(2, 3, 64, 64)).shape == (2, 8, 8)


def test_logits_start_small():
    torch.manual_seed(0)
    logits = DVAE(DVAEConfig()).encoder(map_pixels(torch.rand(2, 3, 64, 64)))
    assert logits.abs().max() < 1.0  # a softmax that is not saturated at step 0


def test_codebook_health_measures():
    codes = torch.tensor([[0, 2, 2]])
    assert code_histogram(codes, 4).tolist() == [1, 0, 2, 0]
    assert dead_codes(codes, 4) == 2
    assert codebook_perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    assert codebook_perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1.0)
    assert histogram_perplexity(torch.tensor([4, 4, 0, 0])) == pytest.approx(2.0)


def test_code_locations():
    assert code_locations(torch.tensor([[[1, 2], [2, 3]]]), 2).tolist() == [[0, 0, 1], [0, 1, 0]]


def test_most_colourful_code_picks_the_code_under_the_colour():
    image = np.full((16, 16, 3), 255, dtype=np.uint8)
    image[8:, :8] = (220, 38, 38)  # one red cell of a 2×2 grid
    assert most_colourful_code(image, np.array([[5, 5], [9, 5]])) == 9


def test_dead_codes_restart_as_copies_of_busy_codes_where_error_is_high():
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY, res_gain=1.0))
    optimizer = make_optimizer(model)
    x = torch.rand(2, 3, 64, 64)
    model(x, tau=1.0).loss.backward()
    optimizer.step()  # Adam moments exist now
    logits = model.encoder(map_pixels(x)).detach()  # (2, 32, 8, 8)
    used = logits.argmax(dim=1)
    error = torch.zeros(2, 8, 8)
    error[1, 3, 5] = 1.0  # only one cell is badly reconstructed: every dead code copies its code
    j = int(used[1, 3, 5])
    dead = torch.ones(32, dtype=torch.bool)
    dead[used.unique()] = False
    head, book = model.encoder.to_logits[-1].weight, model.decoder.codebook.weight
    assert restart_dead_codes(model, dead, logits, error, optimizer) == int(dead.sum()) > 0
    k = dead.nonzero().flatten()
    torch.testing.assert_close(head[k], head[j].expand_as(head[k]), rtol=0.05, atol=1e-6)
    torch.testing.assert_close(book[:, k], book[:, j:j + 1].expand_as(book[:, k]), rtol=0.05, atol=1e-6)
    assert not torch.equal(head[k[0]], head[j])  # a little noise breaks the tie
    assert optimizer.state[book]["exp_avg"][:, k].abs().sum() == 0
    assert optimizer.state[book]["exp_avg"][:, j].abs().sum() > 0
    assert restart_dead_codes(model, torch.zeros(32, dtype=torch.bool), logits, error) == 0


@pytest.mark.parametrize("likelihood, error", [("mse", F.mse_loss), ("l1", F.l1_loss)])
def test_pixel_error_likelihood_options(likelihood, error):
    model = DVAE(DVAEConfig(likelihood=likelihood, **TINY))
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    out = model(x, tau=1.0)
    torch.manual_seed(1)  # the same gumbel noise again, to redo the computation by hand
    z = gumbel_softmax(model.encoder(map_pixels(x)), tau=1.0, dim=1)
    x_mean = (torch.sigmoid(model.decoder(z)[:, :3]) - 0.1) / 0.8  # φ⁻¹(sigmoid(μ)), unclamped
    assert out.recon.item() == pytest.approx(error(x_mean, x).item(), rel=1e-5)
    assert torch.equal(out.x_rec, x_mean.clamp(0, 1))


def test_edge_map_marks_the_pixels_around_a_colour_change():
    from dalle_mini_impl.dvae import edge_map

    x = torch.ones(1, 3, 8, 8)
    x[0, :, 3, 4] = torch.tensor([220, 38, 38]) / 255  # one red pixel
    edges = edge_map(x)
    assert edges.shape == (1, 1, 8, 8) and edges.sum() == 9 and edges[0, 0, 2:5, 3:6].sum() == 9
    assert edge_map(torch.ones(1, 3, 8, 8)).sum() == 0


def test_edge_weight_counts_errors_on_edges_more():
    from dalle_mini_impl.dvae import pixel_error

    x = torch.ones(1, 3, 16, 16)
    x[0, :, 4:12, 4:12] = 0.2  # a grey square: its outline (2 px wide) is the edge
    on_edge, inside = x.clone(), x.clone()
    on_edge[0, :, 4, 8] += 0.1  # the same error on one edge pixel ...
    inside[0, :, 8, 8] += 0.1  # ... and on one pixel inside the square
    assert pixel_error(on_edge, x) == pytest.approx(pixel_error(inside, x).item())
    assert pixel_error(on_edge, x, edge_weight=10.0) > 5 * pixel_error(inside, x, edge_weight=10.0)
    flat = torch.full((1, 3, 16, 16), 0.5)  # no edge: the weight changes nothing
    assert pixel_error(flat + 0.1, flat, "l1", edge_weight=10.0) == pytest.approx(0.1)


def test_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="likelihood must be one of logit_laplace, mse, l1"):
        DVAEConfig(likelihood="bce")


# --- the shipped model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_report():
    model_dir = DATA_DIR / "dvae"
    if not (model_dir / checkpoints.WEIGHTS_NAME).exists():
        pytest.skip(f"no shipped dVAE in {model_dir} (train one with `dalle-mini-impl train-dvae`)")
    torch.set_num_threads(1)
    report = evaluate_reconstructions(load_dvae(model_dir, device="cpu"), n_per_split=300, seed=0)  # 600 images
    print(format_report(report))
    assert report["n"] == 600
    return report


def test_shipped_model_keeps_its_measured_quality(shipped_report):
    # data/dvae/README.md, graded by the strict grader: 12% of 600 held-out images, PSNR 27.5 dB
    assert shipped_report["match"] >= 0.10, format_report(shipped_report)
    assert shipped_report["psnr"] >= 27.0
    assert shipped_report["dead_codes"] <= 512 - 250  # at least 250 codes in use (285 measured on 1000 images)


@pytest.mark.xfail(strict=True, reason="the shipped dVAE's round trips grade 12% under the strict grader: squares come "
                   "back with rounded corners, crosses pinched, diamonds as blobs (data/dvae/README.md) — remove this "
                   "mark when a model that meets the bar ships")
def test_shipped_model_reconstructions_are_graded_correct(shipped_report):
    assert min(shipped_report["by_split"].values()) >= 0.98, format_report(shipped_report)


def test_caption_round_trip_rate_grades_fresh_images_of_one_caption():
    model_dir = DATA_DIR / "dvae"
    if not (model_dir / checkpoints.WEIGHTS_NAME).exists():
        pytest.skip(f"no shipped dVAE in {model_dir}")
    shipped = load_dvae(model_dir, device="cpu")
    rng = np.random.default_rng(0)  # the same scenes, graded by hand
    scenes = [shapes.scene_for_caption("a large red circle", rng) for _ in range(10)]
    rec = to_uint8_images(shipped.reconstruct(to_float_images(shapes.render_batch(scenes))))
    by_hand = np.mean([grader.grade(image, "a large red circle").match for image in rec])
    assert caption_round_trip_rate(shipped, "a large red circle", n=10) == pytest.approx(by_hand)
    blank = DVAE(DVAEConfig(**TINY))  # untrained: draws no object the grader can read
    assert caption_round_trip_rate(blank, "a large red square", n=5) == 0.0


def test_reconstruct_cli_writes_pngs_with_the_same_names(tmp_path):
    from PIL import Image

    from dalle_mini_impl.cli import main

    torch.manual_seed(0)
    checkpoints.save_model(DVAE(DVAEConfig(**TINY)), DVAEConfig(**TINY), tmp_path / "model", "dvae")
    Image.new("RGB", (100, 80), (255, 255, 255)).save(tmp_path / "wide.png")  # any size: resized to 64×64
    Image.new("RGB", (64, 64), (220, 38, 38)).save(tmp_path / "red.jpg")
    out = tmp_path / "out"
    assert main(["reconstruct", str(tmp_path / "wide.png"), str(tmp_path / "red.jpg"), "--out", str(out),
                 "--model", str(tmp_path / "model")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["red.png", "wide.png"]
    assert Image.open(out / "wide.png").size == (64, 64)
    assert main(["reconstruct", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert main(["reconstruct", str(tmp_path / "red.jpg"), "--out", str(out), "--model", str(tmp_path / "nope")]) == 2


def test_saturation_penalty_pulls_overshooting_pixel_logits_back():
    from dalle_mini_impl.dvae import saturation_penalty
    inside = torch.tensor([-2.0, 0.0, 2.0])  # within ±ln 9 = ±2.197: no penalty
    assert saturation_penalty(inside).item() == 0.0
    mu = torch.tensor([50.0, -50.0], requires_grad=True)  # saturated: a pixel error's gradient is ~0 here
    saturation_penalty(mu).backward()
    assert mu.grad[0] > 10 and mu.grad[1] < -10  # ... this one pushes both back towards the range
    model = DVAE(DVAEConfig(likelihood="mse", **TINY))
    assert "saturation" in model(torch.rand(2, 3, 64, 64)).extras
