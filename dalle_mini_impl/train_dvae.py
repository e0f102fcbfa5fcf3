"""Training the dVAE of lesson 2, written out in full.

Scope. ``train_dvae`` is one visible loop — sample a batch, set the
schedules (learning rate, gumbel temperature τ, KL weight β), forward,
backward, step — in the shape every loop of the course shares
(``train_common``), plus what a long run on a laptop needs:

* a seeded run: the same seed gives the same weights;
* a checkpoint every ``checkpoint_every`` steps, written atomically (temp file
  + rename), holding the model, the optimizer, the step and the random
  generators; ``resume=True`` continues a killed run from it, and gives the
  same weights as a run that was never interrupted;
* at each save, the logits head's running mean is recomputed from 512
  training images with the weights being saved (``calibrate_logits_norm``):
  an average of past batches lags the weights and misreads argmax codes;
* a NaN or infinite loss stops the run before the optimizer step, so the last
  checkpoint on disk stays the last good one;
* progress with tqdm, and a PNG of originals above their argmax
  reconstructions every ``sample_every`` steps;
* on a GPU, bf16 autocast and ``torch.compile``; on a CPU, plain PyTorch
  (bf16 autocast only when the CPU has native bf16 instructions, where a
  training step measured 1.9× faster than fp32 in ``bench/bench_dvae.py``;
  ``precision="fp32"`` forces the plain path);
* your own images instead of Shapes (``images=``, e.g. a
  ``folder_data.FolderDataset``'s), with some of them in the sample PNGs;
* several processes under torchrun (``distributed``): every rank draws the
  same global batch and trains on its shard, DDP averages the gradients, only
  rank 0 saves; in one process nothing changes.

``evaluate.evaluate_reconstructions`` measures the result the way the rest of
the course needs it: does the grader still read the caption off the argmax
round trip?

Does not handle: gradient accumulation, or a data loader in worker processes
(the images are held in memory: Shapes renders them once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints, distributed, shapes, train_common
from .dvae import (MODEL_TYPE, PIXEL_ERRORS, DVAE, DVAEConfig, calibrate_logits_norm, kl_weight_at, lr_at, pixel_error,
                   pixel_mean, restart_dead_codes, tau_at)
from .dvae import load as load_dvae
from .images import image_grid, save_png, to_float_images

# ---------------------------------------------------------------------------
# data and optimizer
# ---------------------------------------------------------------------------

CALIBRATION_IMAGES = 512  # training images whose features set the logits head's running mean at each save


def training_images(n: int, seed: int, source: str = shapes.IMAGES_ALL) -> np.ndarray:
    """``n`` Shapes images, uint8 (n, 64, 64, 3), rendered once (about 0.5 ms each).

    ``source``: ``"images_all"`` (every colour-shape pair: the dVAE never reads a caption) or
    ``"train"`` (the held-out pairs left out, as the transformer and CLIP see them).
    """
    return shapes.ShapesDataset(source, size=n, seed=seed).images


def make_optimizer(model: DVAE) -> torch.optim.AdamW:
    """AdamW (β = (0.9, 0.999), the paper's weight decay); the logits conv may get its own lr multiplier."""
    cfg = model.config
    head = set(model.encoder.to_logits.parameters())
    groups = [
        {"params": [p for p in model.parameters() if p not in head], "lr_mult": 1.0},
        {"params": [p for p in model.parameters() if p in head], "lr_mult": cfg.logit_lr_mult},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def train_dvae(
    config: DVAEConfig | None = None,
    steps: int = 3500,
    batch_size: int = 32,
    seed: int = 0,
    out_dir: str | Path = "runs/dvae",
    resume: bool = False,
    images: np.ndarray | torch.Tensor | None = None,
    n_images: int = 60_000,
    source: str = shapes.IMAGES_ALL,
    until: int | None = None,
    checkpoint_every: int = 200,
    sample_every: int = 500,
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
    preview_images: np.ndarray | torch.Tensor | None = None,
) -> DVAE:
    """Train a dVAE on Shapes images (or yours) and keep it in ``out_dir`` (a loadable model folder).

    ``images``: uint8 (N, H, W, C) or float (N, C, H, W) training images;
    by default ``n_images`` Shapes images of ``source`` rendered from ``seed``
    (``"images_all"``: every colour-shape pair; ``"train"``: without the held-out ones).
    ``preview_images``: the images shown in the sample PNGs (default: 8
    held-out Shapes images). ``until``: stop after this step (the schedules
    still span ``steps``); call again with ``resume=True`` to go on — a
    notebook can train in chunks. Under torchrun, ``batch_size`` is the global
    batch, split over the processes. Returns the model in eval mode.
    """
    config = config or DVAEConfig()
    run = train_common.setup(out_dir, batch_size, seed, device, precision, threads, log, progress)
    device, out_dir, log = run.device, run.out_dir, run.log

    # data: rendered once, kept as uint8 (60k images = 740 MB as float, 184 MB as uint8)
    data = images if images is not None else training_images(n_images, seed, source)
    data = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    N = len(data)
    if preview_images is None:
        preview_images = shapes.ShapesDataset("val", size=8, seed=seed).images
    holdout = to_float_images(preview_images[:8])  # (8, C, H, W) for the PNGs
    if holdout.shape[-1] != config.image_size:
        holdout = torch.nn.functional.interpolate(holdout, size=config.image_size, mode="area")

    model = DVAE(config).to(device)
    memory_format = torch.channels_last  # NHWC: the layout oneDNN / cuDNN convolutions prefer
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(model)
    run_info = {"steps": steps, "batch_size": batch_size, "seed": seed}
    step = checkpoints.start_or_resume(run.state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = run.precision
    forward = run.compile(distributed.wrap(model))  # DDP around the model under torchrun, the model otherwise

    calibration = to_float_images(data[:CALIBRATION_IMAGES])  # (n, C, H, W): for the logits head's running mean

    def save(at_step: int) -> None:
        checkpoints.save_training_state(run.state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)

    def save_samples(at_step: int) -> None:
        model.eval()
        x = holdout.to(device)
        save_png(image_grid([x.cpu(), model.reconstruct(x).float().cpu()]), out_dir / "samples" / f"step_{at_step:06d}.png")
        model.train()

    usage = torch.zeros(config.vocab_size, dtype=torch.long)  # argmax picks since the last restart
    restarts = 0
    last = min(until, steps) if until is not None else steps
    bar = run.progress(range(step, last), step, steps, desc="dVAE")
    t0 = time.time()
    model.train()
    for step in bar:
        # 1. the schedules: lr warm-up + cosine, τ cosine 1 -> 1/16, β cosine 0 -> 6.6
        lr, tau, beta = lr_at(step, steps, config), tau_at(step, steps, config), kl_weight_at(step, steps, config)
        train_common.set_lr(optimizer, lr)  # (times the logits head's lr_mult)
        # 2. a random batch (the torch generator is part of the checkpoint, so resuming draws the same batches);
        #    under torchrun every rank draws the same one and keeps its shard
        idx = distributed.shard(torch.randint(0, N, (batch_size,)))
        x = to_float_images(data[idx]).to(device).contiguous(memory_format=memory_format)  # (B, C, H, W)
        # 3. forward, check, backward, step
        with run.autocast:
            out = forward(x, tau=tau, kl_weight=beta)
        train_common.check_finite(out.loss, step, run.state_path)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if config.restart_every and step < 0.8 * steps:  # not in the last 20%: let the codes settle
            usage += torch.bincount(out.logits.detach().argmax(dim=1).flatten().cpu(), minlength=config.vocab_size)
            if (step + 1) % config.restart_every == 0:
                cell_error = F.avg_pool2d(((out.x_rec.detach().float() - x.float()) ** 2).mean(dim=1, keepdim=True),
                                          config.downsample)[:, 0]  # (B, h, w): squared error per cell
                # (under torchrun: every rank's usage and cells, so that all ranks restart the same codes)
                restarts += restart_dead_codes(model, distributed.all_sum(usage) == 0,
                                               distributed.all_gather(out.logits.detach()),
                                               distributed.all_gather(cell_error), optimizer)
                usage.zero_()
        # 4. report, checkpoint, picture
        done = step + 1
        if run.show_progress:
            bar.set_postfix(loss=f"{out.loss.item():.3f}", rec=f"{out.recon.item():.3f}", kl=f"{out.kl.item():.4f}",
                            tau=f"{tau:.3f}", beta=f"{beta:.2f}", **({"restarts": restarts} if config.restart_every else {}), refresh=False)
        saving = run.main and (done % checkpoint_every == 0 or done == last)
        sampling = run.main and (done % sample_every == 0 or done == steps)
        if saving or sampling:
            calibrate_logits_norm(model, calibration)  # eval-mode codes as these weights give them
        if saving:
            save(done)
        if sampling:
            save_samples(done)
    if run.main and last > 0 and not run.state_path.exists():
        calibrate_logits_norm(model, calibration)
        save(last)
    distributed.broadcast_buffers(model)  # the logits head's running statistics rank 0 saved, on every rank
    distributed.barrier()  # the other ranks wait for rank 0's last save (a next stage may read it)
    log(f"trained to step {last}/{steps} in {time.time() - t0:.0f} s -> {out_dir}")
    return model.eval()


# ---------------------------------------------------------------------------
# stage 2: the decoder, on the hard codes it will be given
# ---------------------------------------------------------------------------

PIXEL_LOSSES = tuple(sorted(PIXEL_ERRORS))  # ("l1", "mse")


def finetune_decoder(
    model_dir: str | Path,
    out_dir: str | Path = "runs/dvae_finetuned",
    steps: int = 2000,
    loss: str = "l1",
    lr: float = 5e-4,
    batch_size: int = 32,
    seed: int = 0,
    resume: bool = False,
    images: np.ndarray | torch.Tensor | None = None,
    n_images: int = 30_000,
    source: str = shapes.IMAGES_ALL,
    until: int | None = None,
    checkpoint_every: int = 200,
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DVAE:
    """Train the decoder of the dVAE in ``model_dir`` on its own argmax codes, the encoder frozen; keep it in ``out_dir``.

    Not in the paper. At sampling time the decoder only ever sees one-hot
    codes, and the logit-Laplace likelihood learns a wide scale b exactly at
    edges, where it then learns least: this stage gives the decoder the codes
    it will be given and a plain pixel loss on its means, ``"l1"`` (|x̂ - x|,
    whose optimum is the median: sharp edges) or ``"mse"``. Measured on a 16×16
    grid (``data/dvae/README.md``): round trips graded 33 % -> 63 %.
    The codes of ``n_images`` Shapes images of ``source`` (or of ``images``)
    are encoded once. Returns the model in eval mode.
    """
    if loss not in PIXEL_LOSSES:
        raise ValueError(f"loss must be one of {PIXEL_LOSSES}, got {loss!r}")
    run = train_common.setup(out_dir, batch_size, seed, device, precision, threads, log, progress)
    device, out_dir, log = run.device, run.out_dir, run.log
    model = load_dvae(model_dir, device=device)
    config = model.config
    data = images if images is not None else training_images(n_images, seed, source)
    data = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    codes = torch.cat([model.encode(to_float_images(data[i:i + 250]).to(device)).cpu()
                       for i in run.progress(range(0, len(data), 250), 0, -(-len(data) // 250), desc="encoding")])
    table_of = model.decoder.codebook.weight  # (D, K, 1, 1): the codebook the decoder reads
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=lr, weight_decay=config.weight_decay)
    run_info = {"steps": steps, "batch_size": batch_size, "seed": seed, "loss": loss, "lr": lr,
                "finetuned_from_sha256": checkpoints.weights_hash(model)}
    step = checkpoints.start_or_resume(run.state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = run.precision

    def save(at_step: int) -> None:
        checkpoints.save_training_state(run.state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)
        checkpoints.write_training_info(out_dir, {**run_info, "step": at_step, "finetuned_from": str(model_dir)})

    last = min(until, steps) if until is not None else steps
    bar = run.progress(range(step, last), step, steps, desc="decoder")
    model.encoder.eval()  # frozen: its logits head keeps its running statistics
    model.decoder.train()
    for step in bar:
        train_common.set_lr(optimizer, train_common.lr_at(step, steps, lr, warmup_frac=0.02, end_frac=0.05))
        idx = torch.randint(0, len(data), (batch_size,))
        x = to_float_images(data[idx]).to(device)  # (B, C, H, W)
        z = F.embedding(codes[idx].to(device), table_of[:, :, 0, 0].t()).permute(0, 3, 1, 2)  # (B, D, h, w)
        with run.autocast:
            mu = model.decoder.decode_embedded(z)[:, :config.channels]  # (B, C, H, W), fp32
        # the decoder's mean image as ``decode`` gives it, before the clamp to [0, 1]
        error = pixel_error(pixel_mean(mu, config.eps), x, loss, config.edge_weight)
        train_common.check_finite(error, step, run.state_path)
        optimizer.zero_grad(set_to_none=True)
        error.backward()
        optimizer.step()
        done = step + 1
        if run.show_progress:
            bar.set_postfix(loss=f"{error.item():.5f}", refresh=False)
        if run.main and (done % checkpoint_every == 0 or done == last):
            save(done)
    log(f"decoder fine-tuned to step {last}/{steps} -> {out_dir}")
    return model.eval()
