"""Training the transformer of lesson 3, written out in full, and measuring what it draws.

Scope. ``train_transformer`` is one visible loop in the style of
``train_dvae.train_dvae`` — sample a batch of (caption, codes) pairs, drop some
captions, forward, backward, step — over data prepared once:

* ``cache_codes`` renders the Shapes training images and encodes each one to
  its 8×8 grid of argmax dVAE codes, once; the codes are kept in ``.cache/``
  under a name made of the dVAE's weights hash, the split, the count and the
  seed, so a second run (or a resumed one) starts at once. The transformer
  never sees a pixel.
* the loop: AdamW with a linear warm-up then a cosine decay of the learning
  rate; captions replaced by the empty caption with probability ≈ 0.2
  (``drop_captions``) so that one model learns p(image | text) and p(image),
  which the condition scale needs; gradient clipping; tqdm showing the loss
  and its text and image parts.
* what a long run on a laptop needs, as in ``train_dvae``: a seeded run; an
  atomic checkpoint (``config.json`` + ``model.safetensors`` + the training
  state) every ``checkpoint_every`` steps; ``resume=True`` continues a killed
  run and gives the same weights as a run that was never interrupted; a NaN or
  infinite loss stops the run before the optimizer step, so the last
  checkpoint on disk stays the last good one; bf16 autocast and
  ``torch.compile`` on a GPU; on a CPU, bf16 autocast when it has native bf16, else plain fp32.
* every ``sample_every`` steps, a PNG of samples for a few fixed prompts
  (decoded by the dVAE) and the graded match rate on a handful of test
  captions, appended to ``evals.jsonl``.
* your own images and captions instead of Shapes (``data=`` a
  ``folder_data.FolderDataset``): their codes are cached once the same way
  (``cache_folder_codes``), each draw of an image picks one of its captions at
  random, and the sample PNGs show some of its captions (the grader knows
  only Shapes, so nothing is graded).
* several processes under torchrun (``distributed``): every rank draws the
  same global batch, drops the same captions and trains on its shard; DDP
  averages the gradients; only rank 0 encodes the codes first, saves and
  reports. In one process nothing changes.

``evaluate_samples`` measures a transformer the way the course does: draw one
image per held-out caption and ask ``grader.grade`` whether it shows the
caption — overall, for one- and two-object captions, and per attribute.

Letters used in shape comments: B batch size, Lt text length, G grid side
(G·G codes per image), h = w = G as the dVAE calls them, H, W, C image height,
width and channels, P prompts.

Does not handle: gradient accumulation, a data loader in worker processes (all
codes fit in memory: 60k grids are 7.7 MB), or re-encoding the images with
gumbel noise (the codes are the dVAE's argmax, as in the paper).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import CACHE_DIR, checkpoints, distributed, get_device, shapes, train_common
from .bpe import load_tokenizer
from .dvae import DVAE
from .dvae import load as load_dvae
from .evaluate import evaluate_samples
from .folder_data import FolderDataset, pick_caption_rows
from .images import image_grid, save_png, to_float_images
from .sampling import CONDITION_SCALE, sample_images, seeded_generator
from .transformer import (MODEL_TYPE, DalleTransformer, TransformerConfig, compatibility_problems, config_for,
                          drop_captions, encode_captions)

EVALS_NAME = "evals.jsonl"  # the graded match rate at every sample PNG, one JSON row per evaluation

# The prompts drawn into the sample PNGs during training: three use (colour, shape)
# pairs seen in training, the last one a held-out pair (the "compositional" split).
SAMPLE_PROMPTS = (
    "a large red circle in the top left",
    "a small blue square at the bottom",
    "a green cross to the left of a yellow diamond",
    "an orange diamond in the center",
)


# ---------------------------------------------------------------------------
# images -> codes, once
# ---------------------------------------------------------------------------


def cache_codes(
    dvae: DVAE,
    split: str = "train",
    n: int = 60_000,
    seed: int = 0,
    cache_dir: str | Path = CACHE_DIR,
    batch_size: int = 250,
    progress: bool = True,
) -> tuple[list[str], torch.Tensor]:
    """The captions and argmax dVAE codes of ``n`` Shapes scenes of ``split``, computed once.

    Returns ``(captions, codes)``: a list of ``n`` strings and a (n, h, w)
    tensor of uint8 codes (int16 when the codebook has more than 256 codes:
    512 codes do not fit in a byte). The first call renders the images in
    batches, encodes them (``dvae.encode``: argmax, no noise) and writes
    ``cache_dir/codes_<split>_n<n>_seed<seed>_<dVAE hash>.safetensors``; later
    calls with the same dVAE encoder read that file (the codes depend on nothing else). A corrupt cache file is
    recomputed, with a warning.
    """
    digest = checkpoints.codes_hash(dvae)
    path = Path(cache_dir) / f"codes_{split}_n{n}_seed{seed}_{digest[:16]}.safetensors"
    cached = _read_code_cache(path, with_captions=True)
    if cached is not None:
        return cached[1], cached[0]

    scenes = shapes.make_scenes(split, n, seed)
    captions = [scene.caption for scene in scenes]
    codes = _encode_all(dvae, n, lambda i, j: shapes.render_batch(scenes[i:j]), batch_size,
                        f"dVAE codes ({split})", progress)  # (n, h, w)
    metadata = {"captions": json.dumps(captions), "split": split, "n": str(n), "seed": str(seed), "dvae_encoder_sha256": digest}
    _write_code_cache(path, codes, metadata)
    return captions, codes


def cache_folder_codes(
    dvae: DVAE,
    data: FolderDataset,
    cache_dir: str | Path = CACHE_DIR,
    batch_size: int = 250,
    progress: bool = True,
) -> torch.Tensor:
    """The argmax dVAE codes (n, h, w) of your own images (a ``FolderDataset``), computed once.

    Cached like ``cache_codes``, under a name made of the data's fingerprint
    (pixels and captions) and the hash of the dVAE's encoder:
    ``cache_dir/codes_folder_<data hash>_<dVAE hash>.safetensors``.
    """
    digest = checkpoints.codes_hash(dvae)
    path = Path(cache_dir) / f"codes_folder_{data.fingerprint[:16]}_{digest[:16]}.safetensors"
    cached = _read_code_cache(path, with_captions=False)
    if cached is not None:
        return cached[0]
    codes = _encode_all(dvae, len(data), lambda i, j: data.images[i:j], batch_size, "dVAE codes (your images)",
                        progress)  # (n, h, w)
    _write_code_cache(path, codes, {"root": str(data.root), "n": str(len(data)), "dvae_encoder_sha256": digest})
    return codes


def _encode_all(dvae: DVAE, n: int, images_of: Callable[[int, int], np.ndarray], batch_size: int, desc: str,
                progress: bool) -> torch.Tensor:
    """Codes (n, h, w) of the uint8 images ``images_of(i, j)`` (images i … j - 1), encoded in batches."""
    from tqdm.auto import tqdm

    device = next(dvae.parameters()).device
    K, h = dvae.config.vocab_size, dvae.config.grid_size
    dtype = torch.uint8 if K <= 256 else torch.int16
    codes = torch.empty((n, h, h), dtype=dtype)  # (n, h, w)
    dvae.eval()
    for i in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        images = to_float_images(images_of(i, i + batch_size)).to(device)  # (b, C, H, W)
        codes[i:i + batch_size] = dvae.encode(images).cpu().to(dtype)  # (b, h, w)
    return codes


def _read_code_cache(path: Path, with_captions: bool) -> tuple[torch.Tensor, list[str] | None] | None:
    """(codes, captions) from a cache file, or None when it is absent or unreadable (with a warning)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            captions = json.loads(f.metadata()["captions"]) if with_captions else None
            return f.get_tensor("codes"), captions
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        warnings.warn(f"{path}: unreadable code cache ({err}); encoding the images again", stacklevel=3)
        return None


def _write_code_cache(path: Path, codes: torch.Tensor, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    checkpoints._atomic_write(path, lambda tmp: save_file({"codes": codes}, tmp, metadata=metadata))


# ---------------------------------------------------------------------------
# sampling images, and grading them
# ---------------------------------------------------------------------------


def load_dvae_to_learn(dvae_dir: str | Path | None, device: str) -> DVAE:
    """The dVAE whose codes the transformer learns (default: the shipped one), or an error that says what to do."""
    try:
        return load_dvae(dvae_dir, device=device)
    except checkpoints.CheckpointError as err:
        raise checkpoints.CheckpointError(
            f"{err}. The transformer learns a trained dVAE's codes: train one with dalle-mini-impl train-dvae, "
            "or pass its folder as dvae_dir (--dvae)"
        ) from err


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, β = (0.9, 0.95), with weight decay on matrices and embeddings only (``train_common.decay_groups``).

    The fused implementation (one kernel for the whole update) when this
    PyTorch has it for the model's device: on a busy 2-core CPU it measured
    0.65 s per update against 2.4 s for the default one, a quarter of a step.
    """
    groups = train_common.decay_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older PyTorch, or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@dataclass
class Pairs:
    """Every training pair, ready to draw batches from: image i's captions are rows first[i] … first[i] + count[i] - 1."""

    text_ids: torch.Tensor  # (captions, Lt)
    codes: torch.Tensor  # (images, G·G), uint8 / int16 until a batch is drawn
    first: torch.Tensor  # (images,)
    count: torch.Tensor  # (images,)
    prompts: list[str]  # what the sample PNGs draw


def training_pairs(dvae: DVAE, tokenizer, config: TransformerConfig, data: FolderDataset | None, n_images: int,
                   seed: int, cache_dir: str | Path, progress: bool) -> Pairs:
    """(caption ids, codes) of ``n_images`` Shapes training scenes from ``seed``, or of every image of ``data``."""
    if data is None:  # Shapes: one caption per image
        captions, codes = cache_codes(dvae, "train", n_images, seed, cache_dir, progress=progress)
        first, count = torch.arange(len(captions)), torch.ones(len(captions), dtype=torch.long)
        prompts = list(SAMPLE_PROMPTS)
    else:  # your images, each with one or more captions
        codes = cache_folder_codes(dvae, data, cache_dir, progress=progress)
        captions, first, count = data.caption_table()
        prompts = [c[0] for c in data.captions[:len(SAMPLE_PROMPTS)]]
    return Pairs(encode_captions(tokenizer, captions, config.text_len), codes.flatten(1), first, count, prompts)


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------


def train_transformer(
    config: TransformerConfig | str | None = None,
    dvae_dir: str | Path | None = None,
    steps: int = 2400,
    batch_size: int = 64,
    seed: int = 0,
    out_dir: str | Path = "runs/transformer",
    resume: bool = False,
    n_images: int | None = None,
    until: int | None = None,
    checkpoint_every: int = 200,
    sample_every: int = 500,
    eval_prompts: int | None = None,
    eval_condition_scale: float = CONDITION_SCALE,
    tokenizer_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: FolderDataset | None = None,
) -> DalleTransformer:
    """Train the transformer on (caption, dVAE codes) pairs and keep it in ``out_dir`` (a loadable model folder).

    ``config``: a ``TransformerConfig``, or a preset name (``"cpu"``, the
    default, or ``"gpu"``) whose vocabulary sizes and grid are read off the
    tokenizer and the dVAE; its ``lr``, ``warmup_frac``, ``lr_end_frac``,
    ``weight_decay`` and ``grad_clip`` are the optimisation, as in the dVAE's
    and CLIP's configs. ``dvae_dir``: the dVAE whose codes the
    transformer learns (default: the shipped ``data/dvae``). The data are the
    captions and codes of ``n_images`` (default 60 000) Shapes training scenes
    drawn from ``seed`` (``cache_codes``), or every image of ``data``, your own
    images and captions (a ``FolderDataset``; ``n_images`` must then be left
    out). ``eval_prompts``: test captions graded at every sample PNG (default
    32 on Shapes; the grader knows only Shapes, so 0 with ``data``).
    ``until``: stop after this step (the schedule still spans ``steps``); call
    again with ``resume=True`` to go on. ``precision``: ``"auto"`` is bf16
    autocast on a GPU that has it or a CPU with native bf16 (1.3× faster steps
    than fp32 on one core), else fp32. Under torchrun, ``batch_size`` is the
    global batch, split over the processes. Returns the model in eval mode.
    """
    if data is not None and (n_images is not None or eval_prompts):
        raise ValueError("with data= the images are all of data's and nothing is graded: "
                         "leave out n_images and eval_prompts")
    n_images = len(data) if data is not None else (60_000 if n_images is None else n_images)
    eval_prompts = (0 if data is not None else 32) if eval_prompts is None else eval_prompts
    run = train_common.setup(out_dir, batch_size, seed, device, precision, threads, log, progress)
    device, out_dir, log = run.device, run.out_dir, run.log

    # data: the tokenizer, the dVAE, and every training pair as (text ids, codes), prepared once
    tokenizer = load_tokenizer(tokenizer_path)
    dvae = load_dvae_to_learn(dvae_dir, device)
    config = config_for(tokenizer, dvae, config or "cpu") if not isinstance(config, TransformerConfig) else config
    problems = compatibility_problems(config, tokenizer, dvae)
    if problems:
        raise ValueError("this config does not fit the tokenizer and dVAE: " + "; ".join(problems)
                         + ". Build it with transformer.config_for(tokenizer, dvae, preset)")
    with distributed.main_first():  # under torchrun, rank 0 fills the code cache and the others read it
        pairs = training_pairs(dvae, tokenizer, config, data, n_images, seed, cache_dir or CACHE_DIR, run.show_progress)
    sample_text = encode_captions(tokenizer, pairs.prompts, config.text_len)  # (P, Lt)

    model = DalleTransformer(config).to(device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    run_info = {"steps": steps, "batch_size": batch_size, "seed": seed, "n_images": n_images,
                "dvae_encoder_sha256": checkpoints.codes_hash(dvae)}
    if data is not None:
        run_info["data_sha256"] = data.fingerprint
    step = checkpoints.start_or_resume(run.state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = run.precision
    evals = train_common.MetricsLog(out_dir / EVALS_NAME, step, enabled=run.main and bool(eval_prompts))
    log(f"transformer: {model.num_params() / 1e6:.2f} M parameters, {len(pairs.codes)} training pairs, "
        f"device {device}, {run.precision}")
    loss_fn = run.compile(distributed.wrap(model, method="loss"))  # model.loss, inside DDP under torchrun

    def save(at_step: int) -> None:
        checkpoints.save_training_state(run.state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)
        checkpoints.write_training_info(out_dir, {**run_info, "step": at_step,
                                                  "dvae_dir": str(dvae_dir) if dvae_dir else "data/dvae"})

    def save_samples(at_step: int) -> None:
        # own generator: drawing pictures never moves the training's random stream
        images, _ = sample_images(model, dvae, sample_text.repeat_interleave(4, dim=0),
                                  condition_scale=eval_condition_scale,
                                  generator=seeded_generator(seed, device))  # (P·4, H, W, C)
        save_png(image_grid(np.split(images, len(pairs.prompts))), out_dir / "samples" / f"step_{at_step:06d}.png")
        if eval_prompts:
            report = evaluate_samples(model, dvae, tokenizer, "test", eval_prompts, seed,
                                      condition_scale=eval_condition_scale)
            evals.append({"step": at_step, **report})
            log(f"step {at_step}: graded match {report['match']:.1%} on {report['n']} test captions")
        model.train()

    last = min(until, steps) if until is not None else steps
    bar = run.progress(range(step, last), step, steps, desc="transformer")
    t0 = time.time()
    model.train()
    for step in bar:
        # 1. the learning rate: linear warm-up, then cosine decay
        lr_now = train_common.lr_at(step, steps, config.lr, config.warmup_frac, config.lr_end_frac)
        train_common.set_lr(optimizer, lr_now)
        # 2. a random batch of images, one of each image's captions; ≈ 20 % of the captions become
        #    the empty caption (the torch generator is part of the checkpoint, so a resumed run
        #    draws the same batches); under torchrun every rank draws the same and keeps its shard
        idx = torch.randint(0, len(pairs.codes), (batch_size,))
        text = drop_captions(pairs.text_ids[pick_caption_rows(idx, pairs.first, pairs.count)], config)  # (B, Lt)
        target = pairs.codes[idx].long()  # (B, G·G)
        text, target = distributed.shard(text).to(device), distributed.shard(target).to(device)
        # 3. forward, check, backward, clip, step
        with run.autocast:
            out = loss_fn(text, target)
        train_common.check_finite(out.loss, step, run.state_path)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # 4. report, checkpoint, pictures
        done = step + 1
        if run.show_progress:
            bar.set_postfix({"loss": f"{out.loss.item():.3f}", "text": f"{out.text_loss.item():.3f}",
                             "image": f"{out.image_loss.item():.3f}", "lr": f"{lr_now:.1e}"}, refresh=False)
        if run.main and (done % checkpoint_every == 0 or done == last):
            save(done)
        if run.main and (done % sample_every == 0 or done == steps):
            save_samples(done)
    bar.close()
    if run.main and last > 0 and not run.state_path.exists():
        save(last)
    distributed.barrier()  # the other ranks wait for rank 0's last save (a next stage may read it)
    log(f"trained to step {last}/{steps} in {time.time() - t0:.0f} s -> {out_dir}")
    return model.eval()


# ---------------------------------------------------------------------------
# planning a run
# ---------------------------------------------------------------------------


def measure_steps_per_second(config: TransformerConfig, batch_size: int = 64, steps: int = 30, warmup: int = 3,
                             precision: str = "fp32", threads: int | None = 2, device: str | None = None) -> float:
    """Training steps per second of ``config`` on random codes: plan a real run before starting it.

    The same step as ``train_transformer`` (AdamW, clipping, caption dropout)
    on random captions and codes, timed after ``warmup`` untimed steps.
    """
    from tqdm.auto import tqdm

    device = device or get_device()
    if device == "cpu":
        train_common.setup_cpu(threads)
    torch.manual_seed(0)
    model = DalleTransformer(config).to(device).train()
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    autocast = train_common.autocast(device, precision)
    text = torch.randint(3, config.text_vocab_size, (batch_size, config.text_len))
    text[:, 0], text[:, 16:] = config.bos_id, config.pad_id
    t0 = 0.0
    for i in tqdm(range(warmup + steps), desc="timing steps", mininterval=5.0):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        codes = torch.randint(0, config.image_vocab_size, (batch_size, config.n_image), device=device)
        with autocast:
            out = model.loss(drop_captions(text, config).to(device), codes)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)

