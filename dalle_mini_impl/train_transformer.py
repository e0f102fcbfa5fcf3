"""Training the transformer of lesson 3, written out in full, and measuring what it draws.

Scope. ``train_transformer`` is one visible loop in the style of
``train.train_dvae`` — sample a batch of (caption, codes) pairs, drop some
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

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .sampling import CONDITION_SCALE, TEMPERATURE
from . import CACHE_DIR, DATA_DIR, checkpoints, distributed, get_device, grader, seed_everything, shapes
from .dvae import DVAE, cosine_schedule
from .folder_data import FolderDataset, pick_caption_rows
from .sampling import sample
from .train import (
    TrainingDiverged,
    _saved_step,
    image_grid,
    load_dvae,
    resolve_precision,
    save_png,
    setup_cpu,
    to_float_images,
    to_uint8_images,
)
from .transformer import DalleTransformer, TransformerConfig, drop_captions, encode_captions

MODEL_TYPE = "transformer"
TRAINING_INFO = "training.json"  # how a model folder was trained: which dVAE, steps, seed (read by load_models)

# The prompts drawn into the sample PNGs during training: three use (colour, shape)
# pairs seen in training, the last one a held-out pair (the "compositional" split).
SAMPLE_PROMPTS = (
    "a large red circle in the top left",
    "a small blue square at the bottom",
    "a green cross to the left of a yellow diamond",
    "an orange diamond in the center",
)


# ---------------------------------------------------------------------------
# the tokenizer and the dVAE, seen from here
# ---------------------------------------------------------------------------


def load_tokenizer(path: str | Path | None = None):
    """The course tokenizer (default: the shipped ``data/tokenizer/bpe.json``)."""
    from .bpe import ByteLevelBPE

    path = Path(path) if path is not None else DATA_DIR / "tokenizer" / "bpe.json"
    if not path.is_file():
        raise checkpoints.CheckpointError(
            f"{path}: file not found; expected the course tokenizer. Create it with: dalle-mini-impl train-tokenizer"
        )
    return ByteLevelBPE.load(path)


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameter names and bytes: two models with equal weights share it."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of a tokenizer's vocabulary, merges and special tokens: two tokenizers that split alike share it.

    A CLIP records it (``training.json``): with another tokenizer of the same
    size it would read every id as another token and rank images at random.
    """
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()


def compatibility_problems(config: TransformerConfig, tokenizer, dvae: DVAE) -> list[str]:
    """What stops a transformer with ``config`` from working with this tokenizer and dVAE ([] when nothing).

    Example: a config for a 512-code dVAE next to a 1024-code one ->
    ["the transformer predicts 512 image codes but the dVAE has 1024"].
    """
    problems = []
    if config.text_vocab_size != tokenizer.vocab_size:
        problems.append(f"the transformer reads {config.text_vocab_size} text ids but the tokenizer has "
                        f"{tokenizer.vocab_size}")
    if config.image_vocab_size != dvae.config.vocab_size:
        problems.append(f"the transformer predicts {config.image_vocab_size} image codes but the dVAE has "
                        f"{dvae.config.vocab_size}")
    if config.grid != dvae.config.grid_size:
        problems.append(f"the transformer draws a {config.grid}×{config.grid} grid but the dVAE encodes to "
                        f"{dvae.config.grid_size}×{dvae.config.grid_size}")
    return problems


def config_for(tokenizer, dvae: DVAE, preset: str = "cpu", **overrides) -> TransformerConfig:
    """``TransformerConfig.preset(preset)`` with the vocabularies and grid read off the tokenizer and the dVAE."""
    sizes = dict(text_vocab_size=tokenizer.vocab_size, image_vocab_size=dvae.config.vocab_size,
                 grid=dvae.config.grid_size)
    return TransformerConfig.preset(preset, **{**sizes, **overrides})


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
    calls with the same dVAE weights read that file. A corrupt cache file is
    recomputed, with a warning.
    """
    digest = weights_hash(dvae)
    path = Path(cache_dir) / f"codes_{split}_n{n}_seed{seed}_{digest[:16]}.safetensors"
    cached = _read_code_cache(path, with_captions=True)
    if cached is not None:
        return cached[1], cached[0]

    scenes = shapes.make_scenes(split, n, seed)
    captions = [scene.caption for scene in scenes]
    codes = _encode_all(dvae, n, lambda i, j: shapes.render_batch(scenes[i:j]), batch_size,
                        f"dVAE codes ({split})", progress)  # (n, h, w)
    metadata = {"captions": json.dumps(captions), "split": split, "n": str(n), "seed": str(seed), "dvae_sha256": digest}
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
    (pixels and captions) and the dVAE's weights hash:
    ``cache_dir/codes_folder_<data hash>_<dVAE hash>.safetensors``.
    """
    digest = weights_hash(dvae)
    path = Path(cache_dir) / f"codes_folder_{data.fingerprint[:16]}_{digest[:16]}.safetensors"
    cached = _read_code_cache(path, with_captions=False)
    if cached is not None:
        return cached[0]
    codes = _encode_all(dvae, len(data), lambda i, j: data.images[i:j], batch_size, "dVAE codes (your images)",
                        progress)  # (n, h, w)
    _write_code_cache(path, codes, {"root": str(data.root), "n": str(len(data)), "dvae_sha256": digest})
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


def codes_to_images(dvae: DVAE, codes: torch.Tensor) -> np.ndarray:
    """Code grids (B, h, w) -> uint8 images (B, H, W, C), decoded by the dVAE."""
    device = next(dvae.parameters()).device
    x = dvae.decode(codes.to(device).long()).float()  # (B, C, H, W) in [0, 1]
    return to_uint8_images(x)  # (B, H, W, C)


def sample_images(
    model: DalleTransformer,
    dvae: DVAE,
    text: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    condition_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Captions (B, Lt) -> (uint8 images (B, H, W, C), codes (B, G, G)): ``sampling.sample`` then the dVAE decoder."""
    codes = sample(model, text, temperature=temperature, top_k=top_k, top_p=top_p,
                   condition_scale=condition_scale, generator=generator)  # (B, G, G)
    return codes_to_images(dvae, codes), codes


def _generator(seed: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def evaluate_samples(
    model: DalleTransformer,
    dvae: DVAE,
    tokenizer,
    split: str = "test",
    n_prompts: int = 100,
    seed: int = 0,
    condition_scale: float = CONDITION_SCALE,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> dict:
    """Draw one image for each of ``n_prompts`` captions of ``split`` and grade it with ``grader.grade``.

    The captions are those of ``shapes.make_scenes(split, n_prompts, seed)``,
    and ``seed`` also seeds the sampler, so a report is repeatable. Returns
    ``{"match": overall rate, "by_objects": {1: rate, 2: rate},
    "by_attribute": {check: rate among captions that state it}, "n": ...,
    "split": ..., "condition_scale": ...}``. A rate is None when no caption
    counts towards it.
    """
    from tqdm.auto import tqdm

    device = model.image_head.weight.device
    scenes = shapes.make_scenes(split, n_prompts, seed)
    text = encode_captions(tokenizer, [s.caption for s in scenes], model.config.text_len)  # (n, Lt)
    generator = _generator(seed, device)
    rows = []  # (number of objects, Grade)
    for i in tqdm(range(0, n_prompts, batch_size), desc=f"grading samples ({split})", disable=not progress):
        images, _ = sample_images(model, dvae, text[i:i + batch_size], temperature=temperature, top_k=top_k,
                                  top_p=top_p, condition_scale=condition_scale, generator=generator)
        for scene, image in zip(scenes[i:i + batch_size], images):
            rows.append((len(scene.objects), grader.grade(image, scene.caption)))

    def rate(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "match": rate([g.match for _, g in rows]),
        "by_objects": {k: rate([g.match for n, g in rows if n == k]) for k in (1, 2)},
        "by_attribute": {c: rate([g.checks[c] for _, g in rows if g.checks[c] is not None]) for c in grader.CHECKS},
        "n": len(rows),
        "split": split,
        "condition_scale": condition_scale,
    }


def format_sample_report(report: dict) -> str:
    """One readable line of ``evaluate_samples`` figures."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    objects = ", ".join(f"{k} object{'s' if k > 1 else ''} {pct(v)}" for k, v in report["by_objects"].items())
    attributes = ", ".join(f"{k} {pct(v)}" for k, v in report["by_attribute"].items())
    return (f"graded match of samples: {pct(report['match'])} of {report['n']} {report['split']} captions "
            f"(condition scale {report['condition_scale']}; {objects})\nper attribute: {attributes}")


# ---------------------------------------------------------------------------
# the learning-rate schedule
# ---------------------------------------------------------------------------


def lr_schedule(step: int, steps: int, peak: float, warmup_frac: float = 0.05, end_frac: float = 0.1) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then a cosine from ``peak`` down to ``peak · end_frac``.

    lr(s) = peak · (s + 1) / W                                   for s < W
    lr(s) = end + (peak - end) · (1 + cos(π (s - W) / (S - W))) / 2   after
    Example (peak 1e-3, S = 100, W = 5): step 0 -> 2e-4, step 4 -> 1e-3, step 100 -> 1e-4.
    """
    warmup = max(1, round(warmup_frac * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine_schedule(step - warmup, steps - warmup, peak, peak * end_frac)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on biases and LayerNorm gains), as in GPT-2.

    The fused implementation (one kernel for the whole update) when this
    PyTorch has it for the model's device: on a busy 2-core CPU it measured
    0.65 s per update against 2.4 s for the default one, a quarter of a step.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older PyTorch, or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


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
    n_images: int = 60_000,
    until: int | None = None,
    lr: float = 1e-3,
    warmup_frac: float = 0.05,
    lr_end_frac: float = 0.1,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    checkpoint_every: int = 200,
    sample_every: int = 500,
    eval_prompts: int = 32,
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
    tokenizer and the dVAE. ``dvae_dir``: the dVAE whose codes the
    transformer learns (default: the shipped ``data/dvae``). The data are the
    captions and codes of ``n_images`` Shapes training scenes drawn from
    ``seed`` (``cache_codes``). ``until``: stop after this step (the schedule
    still spans ``steps``); call again with ``resume=True`` to go on.
    ``precision``: ``"auto"`` is bf16 autocast on a GPU that has it or a CPU
    with native bf16 (1.3× faster steps than fp32 on one core), else fp32.
    ``data``: your own images and captions (a ``FolderDataset``) instead of Shapes; ``n_images`` and ``eval_prompts`` then do not apply.
    Under torchrun, ``batch_size`` is the global batch, split over the
    processes. Returns the model in eval mode.
    """
    device = distributed.setup(device)  # joins the other processes when launched by torchrun
    main = distributed.is_main()  # rank 0 (the only process outside torchrun) saves and reports
    log, progress = (log, progress) if main else ((lambda _: None), False)
    distributed.per_rank_batch(batch_size)  # fails early when the processes cannot share the batch
    precision = resolve_precision(precision, device)
    out_dir = Path(out_dir)
    state_path = out_dir / checkpoints.STATE_NAME
    if device == "cpu":
        setup_cpu(threads)
    seed_everything(seed)  # the same seed on every rank: all ranks draw the same global batches

    # data: the tokenizer, the dVAE, and every training pair as (text ids, codes), prepared once
    tokenizer = load_tokenizer(tokenizer_path)
    try:
        dvae = load_dvae(dvae_dir, device=device)
    except checkpoints.CheckpointError as err:
        raise checkpoints.CheckpointError(
            f"{err}. The transformer learns a trained dVAE's codes: train one with dalle-mini-impl train-dvae, "
            "or pass its folder as dvae_dir (--dvae)"
        ) from err
    config = config_for(tokenizer, dvae, config or "cpu") if not isinstance(config, TransformerConfig) else config
    problems = compatibility_problems(config, tokenizer, dvae)
    if problems:
        raise ValueError("this config does not fit the tokenizer and dVAE: " + "; ".join(problems)
                         + ". Build it with train_transformer.config_for(tokenizer, dvae, preset)")
    with distributed.main_first():  # under torchrun, rank 0 fills the code cache and the others read it
        if data is None:  # Shapes: one caption per image
            captions, codes = cache_codes(dvae, "train", n_images, seed, cache_dir or CACHE_DIR, progress=progress)
            first, count = torch.arange(len(captions)), torch.ones(len(captions), dtype=torch.long)
        else:  # your images: image i has captions[first[i] : first[i] + count[i]]
            codes = cache_folder_codes(dvae, data, cache_dir or CACHE_DIR, progress=progress)
            captions, first, count = data.caption_table()
            n_images, eval_prompts = len(data), 0  # the grader knows only Shapes captions
    text_ids = encode_captions(tokenizer, captions, config.text_len)  # (captions, Lt)
    codes = codes.flatten(1)  # (n_images, G·G), uint8 / int16 until a batch is drawn
    prompts = list(SAMPLE_PROMPTS) if data is None else [c[0] for c in data.captions[:len(SAMPLE_PROMPTS)]]
    sample_text = encode_captions(tokenizer, prompts, config.text_len)  # (P, Lt)

    model = DalleTransformer(config).to(device)
    optimizer = make_optimizer(model, lr, weight_decay)
    run_info = {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "n_images": n_images,
                "dvae_sha256": weights_hash(dvae)}
    if data is not None:
        run_info["data_sha256"] = data.fingerprint
    step = checkpoints.start_or_resume(state_path, model, optimizer, config, run_info, resume, log)
    run_info["precision"] = precision
    log(f"transformer: {model.num_params() / 1e6:.2f} M parameters, {len(codes)} training pairs, "
        f"device {device}, {precision}")

    loss_of = distributed.wrap(model, method="loss")  # model.loss, inside DDP under torchrun
    loss_fn = torch.compile(loss_of) if device.startswith("cuda") else loss_of
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def save(at_step: int) -> None:
        checkpoints.save_training_state(state_path, model, optimizer, at_step, config, extra=run_info)
        checkpoints.save_model(model, config, out_dir, MODEL_TYPE)
        info = {**run_info, "step": at_step, "dvae_dir": str(dvae_dir) if dvae_dir else "data/dvae"}
        checkpoints._write_text(out_dir / TRAINING_INFO, json.dumps(info, indent=2) + "\n")

    def save_samples(at_step: int) -> None:
        # own generators: drawing pictures never moves the training's random stream
        g = _generator(seed, device)
        images, _ = sample_images(model, dvae, sample_text.repeat_interleave(4, dim=0),
                                  condition_scale=eval_condition_scale, generator=g)  # (P·4, H, W, C)
        rows = list(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).split(4))  # P × (4, C, H, W)
        save_png(image_grid(rows), out_dir / "samples" / f"step_{at_step:06d}.png")
        if eval_prompts:
            report = evaluate_samples(model, dvae, tokenizer, "test", eval_prompts, seed,
                                      condition_scale=eval_condition_scale)
            with open(out_dir / "evals.jsonl", "a") as f:
                f.write(json.dumps({"step": at_step, **report}) + "\n")
            log(f"step {at_step}: graded match {report['match']:.1%} on {report['n']} test captions")
        model.train()

    from tqdm.auto import tqdm

    last = min(until, steps) if until is not None else steps
    bar = tqdm(range(step, last), initial=step, total=steps, desc="transformer", mininterval=5.0,
               disable=not progress)
    t0 = time.time()
    model.train()
    for step in bar:
        # 1. the learning rate: linear warm-up, then cosine decay
        lr_now = lr_schedule(step, steps, lr, warmup_frac, lr_end_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        # 2. a random batch of images, one of each image's captions; ≈ 20 % of the captions become
        #    the empty caption (the torch generator is part of the checkpoint, so a resumed run
        #    draws the same batches); under torchrun every rank draws the same and keeps its shard
        idx = torch.randint(0, len(codes), (batch_size,))
        text = drop_captions(text_ids[pick_caption_rows(idx, first, count)], config)  # (B, Lt)
        target = codes[idx].long()  # (B, G·G)
        text, target = distributed.shard(text).to(device), distributed.shard(target).to(device)
        # 3. forward, check, backward, clip, step
        with autocast:
            out = loss_fn(text, target)
        if not distributed.all_finite(out.loss):
            raise TrainingDiverged(
                f"loss is {out.loss.item()} at step {step}; stopped before updating the weights. "
                f"The last good checkpoint is {state_path} (step {_saved_step(state_path)}); "
                "lower the learning rate or use precision='fp32', then resume."
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        # 4. report, checkpoint, pictures
        done = step + 1
        if progress:
            bar.set_postfix({"loss": f"{out.loss.item():.3f}", "text": f"{out.text_loss.item():.3f}",
                             "image": f"{out.image_loss.item():.3f}", "lr": f"{lr_now:.1e}"}, refresh=False)
        if main and (done % checkpoint_every == 0 or done == last):
            save(done)
        if main and (done % sample_every == 0 or done == steps):
            save_samples(done)
    bar.close()
    if main and last > 0 and not state_path.exists():
        save(last)
    distributed.barrier()  # the other ranks wait for rank 0's last save (a next stage may read it)
    log(f"trained to step {last}/{steps} in {time.time() - t0:.0f} s -> {out_dir}")
    return model.eval()


# ---------------------------------------------------------------------------
# loading a trained transformer
# ---------------------------------------------------------------------------


def load_transformer(model_dir: str | Path | None = None, device: str | None = None) -> DalleTransformer:
    """The transformer in ``model_dir`` (default: the shipped ``data/transformer``), in eval mode."""
    model_dir = Path(model_dir) if model_dir is not None else DATA_DIR / "transformer"
    return checkpoints.load_model(model_dir, DalleTransformer, TransformerConfig, MODEL_TYPE,
                                  device=device or get_device())


def training_info(model_dir: str | Path) -> dict:
    """What ``train_transformer`` recorded about a model folder (``training.json``), or {} when absent."""
    path = Path(model_dir) / TRAINING_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def measure_steps_per_second(config: TransformerConfig, batch_size: int = 64, steps: int = 30, warmup: int = 3,
                             precision: str = "fp32", threads: int | None = 2, device: str | None = None) -> float:
    """Training steps per second of ``config`` on random codes: plan a real run before starting it.

    The same step as ``train_transformer`` (AdamW, clipping, caption dropout)
    on random captions and codes, timed after ``warmup`` untimed steps.
    """
    from tqdm.auto import tqdm

    device = device or get_device()
    if device == "cpu":
        setup_cpu(threads)
    torch.manual_seed(0)
    model = DalleTransformer(config).to(device).train()
    optimizer = make_optimizer(model, 1e-3, 0.1)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)

