"""Training CLIP on Shapes (lesson 4), written out in full, and measuring it.

Scope. ``train_clip`` is one visible loop — draw a batch of fresh Shapes
scenes, render them, tokenize their captions, set the learning rate, forward,
backward, step — with what a long run on a laptop needs, as in
``train_dvae.train_dvae``:

* fresh data every step, never repeated: batch k holds training scenes
  k·B … k·B + B - 1 of the seeded split (``shapes.scene_rng``), so the data is
  a pure function of ``(seed, step)`` and needs no memory;
* a seeded run: the same seed gives the same weights;
* a checkpoint every ``checkpoint_every`` steps, written atomically, holding
  the model, the optimizer, the step and the random generators; ``resume=True``
  continues a killed run and gives the same weights as a run never
  interrupted;
* a NaN or infinite loss stops the run before the optimizer step, so the last
  checkpoint on disk stays the last good one;
* progress with tqdm, and every ``eval_every`` steps zero-shot accuracy on
  held-out ``val`` images, logged and appended to ``metrics.jsonl``;
* on a GPU, bf16 autocast and ``torch.compile``; on a CPU, plain float32
  (``precision="bf16"`` forces autocast there too);
* your own images and captions instead of Shapes (``data=`` a
  ``folder_data.FolderDataset``): each step draws B random images and one of
  each image's captions (zero-shot accuracy, which needs Shapes labels, is
  then not measured);
* several processes under torchrun (``distributed``): every rank knows the
  whole global batch, encodes its shard, and gathers every rank's vectors
  (``distributed.gather_with_grad``) so that the loss still contrasts each
  image with all B captions, as in one process; DDP averages the gradients;
  only rank 0 saves and reports.

``evaluate_clip`` measures a trained CLIP: zero-shot accuracy per attribute on
one-object ``test`` images (pairs seen in training) and ``compositional``
images (the five held-out colour–shape pairs), and text -> image R@1 on 100
``test`` scenes.

Does not handle: gradient accumulation, or a data loader in worker processes
(rendering a batch of 128 takes about 60 ms).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoints, distributed, shapes, train_common
from .bpe import ByteLevelBPE, load_tokenizer, tokenizer_hash
from .clip import MODEL_TYPE, CLIP, CLIPConfig, contrastive_loss, hard_negative, one_object_scenes, same_caption
from .evaluate import zero_shot_accuracy
from .folder_data import FolderDataset, pick_caption_rows
from .images import to_float_images
from .transformer import encode_captions

METRICS_NAME = "metrics.jsonl"


# ---------------------------------------------------------------------------
# data and schedule
# ---------------------------------------------------------------------------


def training_batch(step: int, batch_size: int, seed: int) -> list[shapes.Scene]:
    """The scenes of batch ``step``: training scenes ``step·B … step·B + B - 1`` of ``seed``.

    The same as ``shapes.make_scenes("train", (step + 1) * B, seed)[step * B:]``, without drawing the ones before.
    """
    start = step * batch_size
    return [shapes.sample_scene(shapes.scene_rng("train", seed, i), "train") for i in range(start, start + batch_size)]


def lr_at(step: int, total_steps: int, config: CLIPConfig) -> float:
    """Linear warm-up to ``config.lr``, then a cosine down to ``lr * lr_end_frac`` (``train_common.lr_at``)."""
    return train_common.lr_at(step, total_steps, config.lr, config.warmup_frac, config.lr_end_frac)


def make_optimizer(model: CLIP, config: CLIPConfig) -> torch.optim.AdamW:
    """AdamW with CLIP's β₂ = 0.98 and ε = 1e-6; weight decay on every tensor of dim >= 2
    (``train_common.decay_groups``): matrices, embeddings, and also the position embeddings and the
    [CLS] vector (shape (1, 1, d)); none on biases, norm gains and the temperature."""
    groups = train_common.decay_groups(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


class PairEncoder(torch.nn.Module):
    """CLIP's forward pass without the loss: B pairs -> (v (B, E), t (B, E), s), the unit vectors and the scale.

    The loop computes the loss itself, so that under torchrun it can first
    gather every rank's vectors; DDP wraps this module, whose forward uses
    every parameter of the CLIP model.
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, ids: torch.Tensor, hard_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (v, t, s, t_hard): t_hard (K, E) are the unit vectors of ``hard_ids``, None without them."""
        hard = self.clip.encode_text(hard_ids).float() if hard_ids is not None else None
        return self.clip.encode_image(images).float(), self.clip.encode_text(ids).float(), self.clip.logit_scale.float(), hard


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------


def train_clip(
    config: CLIPConfig | None = None,
    steps: int = 1500,
    batch_size: int = 128,
    seed: int = 0,
    out_dir: str | Path = "runs/clip",
    resume: bool = False,
    tokenizer: ByteLevelBPE | None = None,
    until: int | None = None,
    checkpoint_every: int = 100,
    eval_every: int = 250,
    eval_n: int = 300,
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: FolderDataset | None = None,
) -> CLIP:
    """Train CLIP on fresh Shapes (image, caption) pairs and keep it in ``out_dir`` (a loadable model folder).

    ``until``: stop after this step (the schedule still spans ``steps``); call
    again with ``resume=True`` to go on — a notebook can train in chunks.
    ``eval_every``: zero-shot accuracy on ``eval_n`` one-object ``val`` images
    (0 turns it off). ``data``: your own images and captions (a
    ``FolderDataset``, at ``config.image_size``) instead of Shapes; only the
    loss is then logged. Under torchrun, ``batch_size`` is the global batch,
    split over the processes. Returns the model in eval mode.
    """
    config = config or CLIPConfig()
    tokenizer = tokenizer or load_tokenizer()
    if tokenizer.vocab_size > config.text_vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but config.text_vocab_size is "
                         f"{config.text_vocab_size}; raise text_vocab_size to at least {tokenizer.vocab_size}")
    if data is not None and data.image_size != config.image_size:
        raise ValueError(f"the images of {data.root} are {data.image_size}×{data.image_size} but the model reads "
                         f"{config.image_size}×{config.image_size}; load them with image_size={config.image_size}")
    # auto precision: bf16 on a GPU; fp32 on every CPU (a CLIP step measured no faster in bf16 there)
    run = train_common.setup(out_dir, batch_size, seed, device, precision, threads, log, progress, cpu_bf16=False)
    device, out_dir, log = run.device, run.out_dir, run.log

    model = CLIP(config).to(device)
    optimizer = make_optimizer(model, config)
    run_info = {"steps": steps, "batch_size": batch_size, "seed": seed}
    if data is not None:
        run_info["data_sha256"] = data.fingerprint
    step = checkpoints.start_or_resume(run.state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = run.precision
    metrics = train_common.MetricsLog(out_dir / METRICS_NAME, step, enabled=run.main)
    # DDP around the pair encoder under torchrun, the module itself otherwise
    forward = run.compile(distributed.wrap(PairEncoder(model)))
    zero_shot = eval_every and data is None  # zero-shot labels exist for Shapes only
    eval_scenes = one_object_scenes("val", eval_n, seed) if zero_shot else []
    eval_images = shapes.render_batch(eval_scenes) if zero_shot else None
    if data is not None:  # every caption encoded once: (captions, T); image i's are rows first[i] … + count[i] - 1
        captions, first, count = data.caption_table()
        caption_ids = encode_captions(tokenizer, captions, config.text_len)

    trained_with = {"tokenizer_sha256": tokenizer_hash(tokenizer)}  # load_models checks it against its tokenizer

    def save(at_step: int) -> None:
        checkpoints.save_training_state(run.state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)
        checkpoints.write_training_info(out_dir, {**run_info, **trained_with, "step": at_step})

    def evaluate(at_step: int, mean_loss: float) -> None:
        model.eval()
        acc = zero_shot_accuracy(model, tokenizer, eval_images, eval_scenes) if zero_shot else {}
        model.train()
        row = {"step": at_step, "loss": round(mean_loss, 4), "scale": round(model.logit_scale.item(), 2),
               **{k: round(v, 4) for k, v in acc.items()}}
        metrics.append(row)
        log(f"step {at_step}: loss {mean_loss:.3f} | scale {row['scale']:.1f}"
            + (f" | zero-shot on {eval_n} val images: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
               if acc else ""))

    def batch(at_step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """uint8 images (b, H, W, C) of this rank's shard, the token ids (B, T) of the whole global batch,
        and with ``config.hard_negatives`` the ids (B, T) of one hard negative per caption (else None)."""
        if data is None:  # B fresh Shapes scenes, a pure function of (seed, step)
            scenes = training_batch(at_step, batch_size, seed)
            captions = [s.caption for s in scenes]
            ids = encode_captions(tokenizer, captions, config.text_len)  # (B, T)
            hard = None
            if config.hard_negatives:  # a pure function of (seed, step) too
                rng = np.random.default_rng([seed, at_step, 1])
                hard = encode_captions(tokenizer, [hard_negative(c, rng) for c in captions], config.text_len)
            return shapes.render_batch(distributed.shard(scenes)), ids, hard
        idx = torch.randint(0, len(data), (batch_size,))  # B random images, one random caption each
        return data.images[distributed.shard(idx).numpy()], caption_ids[pick_caption_rows(idx, first, count)], None

    last = min(until, steps) if until is not None else steps
    bar = run.progress(range(step, last), step, steps, desc="CLIP")
    t0, losses = time.time(), []
    model.train()
    for step in bar:
        # 1. the learning rate: warm-up, then cosine
        lr = lr_at(step, steps, config)
        train_common.set_lr(optimizer, lr)
        # 2. a fresh batch: pixels and token ids; identical captions are positives of each other
        pixels, ids, hard = batch(step)
        images = to_float_images(pixels).to(device)  # (b, C, H, W) in [0, 1]: this rank's shard (b = B in one process)
        ids = ids.to(device)  # (B, T): the whole global batch
        positives = same_caption(ids)  # (B, B)
        # 3. forward, check, backward, step; under torchrun each rank encodes its shard, then gathers
        #    every rank's vectors, so that each image is contrasted with all B captions
        hard = hard.to(device) if hard is not None else None  # (B, T): one more wrong caption per image
        with run.autocast:
            v, t, scale, hard_t = forward(images, distributed.shard(ids), None if hard is None else distributed.shard(hard))
            v, t = distributed.gather_with_grad(v), distributed.gather_with_grad(t)  # (B, E) each
            hard_positives = None
            if hard is not None:  # in the image -> text softmax only; a "negative" equal to a caption is right
                hard_t = distributed.gather_with_grad(hard_t)  # (B, E)
                hard_positives = (ids[:, None, :] == hard[None, :, :]).all(-1)  # (B, B)
            loss = contrastive_loss(v, t, scale, positives, hard_t, hard_positives)
        train_common.check_finite(loss, step, run.state_path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # 4. report, checkpoint, evaluate
        done = step + 1
        losses.append(loss.item())
        if run.show_progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{model.logit_scale.item():.1f}", lr=f"{lr:.1e}", refresh=False)
        if run.main and (done % checkpoint_every == 0 or done == last):
            save(done)
        if eval_every and (done % eval_every == 0 or done == steps):
            if run.main:
                evaluate(done, float(np.mean(losses)))
            losses = []
    if run.main and last > 0 and not run.state_path.exists():
        save(last)
    distributed.barrier()  # the other ranks wait for rank 0's last save (a next stage may read it)
    log(f"trained to step {last}/{steps} in {time.time() - t0:.0f} s -> {out_dir}")
    return model.eval()
