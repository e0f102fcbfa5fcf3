"""Training loops, written out in full: the dVAE of lesson 2 (and, later, the transformer and CLIP).

Scope. ``train_dvae`` is one visible loop — sample a batch, set the
schedules (learning rate, gumbel temperature τ, KL weight β), forward,
backward, step — plus what a long run on a laptop needs:

* a seeded run: the same seed gives the same weights;
* a checkpoint every ``checkpoint_every`` steps, written atomically (temp file
  + rename), holding the model, the optimizer, the step and the random
  generators; ``resume=True`` continues a killed run from it, and gives the
  same weights as a run that was never interrupted;
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

``evaluate_reconstructions`` measures a dVAE the way the rest of the course
needs it: does the grader still read the caption off the argmax round trip?

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

from . import checkpoints, distributed, get_device, grader, seed_everything, shapes
from .dvae import DVAE, DVAEConfig, codebook_stats, kl_weight_at, lr_at, psnr, restart_dead_codes, tau_at

MODEL_TYPE = "dvae"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


# ---------------------------------------------------------------------------
# small helpers a lesson can call
# ---------------------------------------------------------------------------


def setup_cpu(threads: int | None = 2) -> None:
    """CPU speed settings: flush denormal floats to zero (they make CPU arithmetic crawl), and the thread count.

    On a 2-core machine shared with other jobs, 1 thread can be several times
    faster than 2 (OpenMP threads wait for each other); on an idle machine, 2.
    """
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matrix products natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a GPU or a CPU with native bf16, else ``"fp32"``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]; a float (N, C, H, W) tensor passes through."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float().div(255.0)  # (N, H, W, C) -> (N, C, H, W)
    return images.float()


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C), rounded: the inverse of ``to_float_images``."""
    return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, H, W, C)


def image_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Stack rows of images (each (N, C, H, W) in [0, 1]) into one uint8 (rows·H, N·W, C) picture."""
    grid = torch.stack(rows)  # (R, N, C, H, W)
    R, N, C, H, W = grid.shape
    grid = grid.permute(0, 3, 1, 4, 2).reshape(R * H, N * W, C)  # (R·H, N·W, C)
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, C) array as a PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def training_images(n: int, seed: int, source: str = shapes.IMAGES_ALL) -> np.ndarray:
    """``n`` Shapes images, uint8 (n, 64, 64, 3), rendered once (about 0.5 ms each).

    ``source``: ``"images_all"`` (every colour-shape pair: the dVAE never reads a caption) or
    ``"train"`` (the held-out pairs left out, as the transformer and CLIP see them).
    """
    return shapes.ShapesDataset(source, size=n, seed=seed).images


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------


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
    device = distributed.setup(device)  # joins the other processes when launched by torchrun
    main = distributed.is_main()  # rank 0 (the only process outside torchrun) saves and reports
    log = log if main else (lambda _: None)
    distributed.per_rank_batch(batch_size)  # fails early when the processes cannot share the batch
    precision = resolve_precision(precision, device)
    out_dir = Path(out_dir)
    state_path = out_dir / checkpoints.STATE_NAME
    if device == "cpu":
        setup_cpu(threads)
    seed_everything(seed)  # the same seed on every rank: all ranks draw the same global batches

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
    step = checkpoints.start_or_resume(state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = precision

    trained = distributed.wrap(model)  # DDP around the model under torchrun, the model itself otherwise
    forward = torch.compile(trained) if device.startswith("cuda") else trained
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def save(at_step: int) -> None:
        checkpoints.save_training_state(state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)

    def save_samples(at_step: int) -> None:
        model.eval()
        x = holdout.to(device)
        save_png(image_grid([x.cpu(), model.reconstruct(x).float().cpu()]), out_dir / "samples" / f"step_{at_step:06d}.png")
        model.train()

    usage = torch.zeros(config.vocab_size, dtype=torch.long)  # argmax picks since the last restart
    restarts = 0
    last = min(until, steps) if until is not None else steps
    bar = _progress(range(step, last), initial=step, total=steps, enabled=progress and main)
    t0 = time.time()
    model.train()
    for step in bar:
        # 1. the schedules: lr warm-up + cosine, τ cosine 1 -> 1/16, β cosine 0 -> 6.6
        lr, tau, beta = lr_at(step, steps, config), tau_at(step, steps, config), kl_weight_at(step, steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        # 2. a random batch (the torch generator is part of the checkpoint, so resuming draws the same batches);
        #    under torchrun every rank draws the same one and keeps its shard
        idx = distributed.shard(torch.randint(0, N, (batch_size,)))
        x = to_float_images(data[idx]).to(device).contiguous(memory_format=memory_format)  # (B, C, H, W)
        # 3. forward, check, backward, step
        with autocast:
            out = forward(x, tau=tau, kl_weight=beta)
        if not distributed.all_finite(out.loss):
            raise TrainingDiverged(
                f"loss is {out.loss.item()} at step {step}; stopped before updating the weights. "
                f"The last good checkpoint is {state_path} (step {_saved_step(state_path)}); "
                "lower the learning rate or use precision='fp32', then resume."
            )
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
        if progress and main:
            bar.set_postfix(loss=f"{out.loss.item():.3f}", rec=f"{out.recon.item():.3f}", kl=f"{out.kl.item():.4f}",
                            tau=f"{tau:.3f}", beta=f"{beta:.2f}", **({"restarts": restarts} if config.restart_every else {}), refresh=False)
        if main and (done % checkpoint_every == 0 or done == last):
            save(done)
        if main and (done % sample_every == 0 or done == steps):
            save_samples(done)
    if main and last > 0 and not state_path.exists():
        save(last)
    distributed.broadcast_buffers(model)  # the BatchNorm statistics rank 0 saved, on every rank
    distributed.barrier()  # the other ranks wait for rank 0's last save (a next stage may read it)
    log(f"trained to step {last}/{steps} in {time.time() - t0:.0f} s -> {out_dir}")
    return model.eval()


def _saved_step(state_path: Path) -> str:
    """The step recorded in a training-state file, for error messages."""
    if not state_path.exists():
        return "none yet"
    from safetensors import safe_open

    with safe_open(str(state_path), framework="pt") as f:
        return (f.metadata() or {}).get("step", "?")


def _progress(iterable, initial: int, total: int, enabled: bool, desc: str = "dVAE"):
    """A tqdm bar over ``iterable`` (resuming at ``initial``), or a silent stand-in with the same methods."""
    if not enabled:
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, initial=initial, total=total, desc=desc, mininterval=5.0)


class _Quiet:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **_):
        pass


# ---------------------------------------------------------------------------
# loading and measuring a trained dVAE
# ---------------------------------------------------------------------------


def load_dvae(model_dir: str | Path | None = None, device: str | None = None) -> DVAE:
    """The dVAE in ``model_dir`` (default: the shipped ``data/dvae``), in eval mode."""
    from . import DATA_DIR

    model_dir = Path(model_dir) if model_dir is not None else DATA_DIR / "dvae"
    return checkpoints.load_model(model_dir, DVAE, DVAEConfig, MODEL_TYPE, device=device or get_device())


@torch.no_grad()
def reconstruct_batched(model: DVAE, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Argmax round trip of (N, C, H, W) images in [0, 1], in batches; returns float (N, C, H, W) on the CPU."""
    device = next(model.parameters()).device
    out = [model.reconstruct(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def evaluate_reconstructions(
    model: DVAE, n_per_split: int = 500, seed: int = 0, splits: tuple[str, ...] = ("test", "compositional")
) -> dict:
    """Grade argmax reconstructions of held-out Shapes images against their captions.

    For each split: ``n_per_split`` scenes rendered from ``seed``, encoded to
    codes, decoded, quantised to uint8 and graded by ``grader.grade``. Returns
    ``{"match": overall rate, "by_split": {split: rate}, "by_objects": {1: rate, 2: rate},
    "failures": {check: count}, "psnr": dB, "perplexity": ..., "dead_codes": ..., "n": ...}``.
    """
    model.eval()
    rows, originals, recons = [], [], []
    for split in splits:
        scenes = shapes.make_scenes(split, n_per_split, seed)
        x = to_float_images(shapes.render_batch(scenes))  # (n, C, H, W)
        x_rec = reconstruct_batched(model, x)  # (n, C, H, W)
        rec_u8 = to_uint8_images(x_rec)  # (n, H, W, C)
        for scene, image in zip(scenes, rec_u8):
            g = grader.grade(image, scene.caption)
            rows.append((split, len(scene.objects), bool(g.match), g.checks))
        originals.append(x)
        recons.append(x_rec)
    x, x_rec = torch.cat(originals), torch.cat(recons)

    def rate(keep) -> float:
        sel = [r[2] for r in rows if keep(r)]
        return sum(sel) / max(len(sel), 1)

    failures: dict[str, int] = {}
    for _, _, ok, checks in rows:
        for name, passed in checks.items():
            if not ok and passed is False:
                failures[name] = failures.get(name, 0) + 1
    stats = codebook_stats(model, x)
    return {
        "match": rate(lambda r: True),
        "by_split": {s: rate(lambda r, s=s: r[0] == s) for s in splits},
        "by_objects": {k: rate(lambda r, k=k: r[1] == k) for k in (1, 2)},
        "failures": failures,
        "psnr": psnr(x_rec, x),
        "perplexity": stats["perplexity"],
        "dead_codes": stats["dead_codes"],
        "n": len(rows),
    }


@torch.no_grad()
def caption_round_trip_rate(model: DVAE, caption: str, n: int = 40, seed: int = 0) -> float:
    """How often the argmax round trip of a fresh image of ``caption`` is still graded as ``caption``.

    ``n`` images drawn by ``shapes.scene_for_caption`` from ``seed`` (what the
    caption leaves open, such as position, varies). It isolates one colour,
    shape and size: ``"a small blue cross"`` asks whether the codebook can
    draw that object at all. Example: the shipped dVAE, n=40 -> 0.0 for a small
    red cross (the strict grader rejects its pinched, four-pointed crosses).
    """
    rng = np.random.default_rng(seed)
    scenes = [shapes.scene_for_caption(caption, rng) for _ in range(n)]
    x_rec = reconstruct_batched(model.eval(), to_float_images(shapes.render_batch(scenes)))
    rec_u8 = to_uint8_images(x_rec)  # (n, H, W, C)
    return sum(bool(grader.grade(image, caption).match) for image in rec_u8) / n


def format_report(report: dict) -> str:
    """One readable block of ``evaluate_reconstructions`` figures."""
    splits = ", ".join(f"{s} {v:.1%}" for s, v in report["by_split"].items())
    objects = ", ".join(f"{k} object{'s' if k > 1 else ''} {v:.1%}" for k, v in report["by_objects"].items())
    return (
        f"graded match of argmax reconstructions: {report['match']:.1%} of {report['n']} ({splits}; {objects})\n"
        f"failed checks: {report['failures'] or 'none'}\n"
        f"PSNR {report['psnr']:.2f} dB | codebook perplexity {report['perplexity']:.1f} | dead codes {report['dead_codes']}"
    )

