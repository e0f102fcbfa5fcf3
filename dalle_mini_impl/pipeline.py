"""Text to images, the whole way (lesson 5): tokenize → sample N → decode → rerank → keep K.

Scope. ``generate`` is the pipeline of Ramesh et al. 2021 (§2.5, Fig. 1) on
the course's three models::

    prompt ─▶ BPE ids ─▶ transformer samples N code grids ─▶ dVAE decodes N images
           ─▶ CLIP scores each image against the prompt ─▶ the best K, best first

Without a CLIP model the reranking step is skipped and the first K images are
kept in sampling order. ``load_models`` loads the shipped models (or those in
any folder laid out like ``data/``)::

    models_dir/
        tokenizer/bpe.json
        dvae/{config.json, model.safetensors}
        transformer/{config.json, model.safetensors}
        clip/{config.json, model.safetensors}     (optional)

Letters used in shape comments: N candidates, K kept images, Lt text length,
H, W, C image height, width and channels.

Reproducibility: each prompt gets its own random generator seeded with
``seed``, so a (prompt, seed) pair always gives the same images, whatever
other prompts are generated with it.

Does not handle: image prompts (completing given codes), batching several
prompts into one sampling call, or prompts longer than the transformer's
``text_len`` tokens (truncated, with a warning).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import DATA_DIR, checkpoints, get_device
from .bpe import load_tokenizer, tokenizer_hash
from .dvae import DVAE
from .dvae import load as load_dvae
from .sampling import CONDITION_SCALE, TEMPERATURE, sample_images
from .transformer import DalleTransformer, compatibility_problems, encode_captions
from .transformer import load as load_transformer


@dataclass
class GenerationResult:
    """The images kept for one prompt, best first."""

    prompt: str
    images: np.ndarray  # uint8 (K, H, W, C)
    scores: np.ndarray | None  # float32 (K,): CLIP cosine similarity to the prompt; None without reranking


@dataclass
class Models:
    """Everything ``generate`` needs; ``clip`` is None when no CLIP model was found."""

    tokenizer: object
    dvae: DVAE
    transformer: DalleTransformer
    clip: torch.nn.Module | None = None


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A prompt or a list of prompts -> a list of prompts; ``ValueError`` for none at all or an empty one.

    Example: "a red circle" -> ["a red circle"]; ["a red circle", "  "] -> ValueError (prompt 1 is empty).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one prompt such as 'a blue diamond at the top'")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is {type(prompt).__name__}, not text")
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty: give a caption such as 'a blue diamond at the top'")
    return prompts


# Candidates sampled at once. Memory grows with the batch (about 0.2 MB per candidate for the shipped
# models), so N = 100000 is drawn 64 at a time, keeping only the best K between batches.
SAMPLE_BATCH = 64


@torch.no_grad()
def generate(
    prompts: str | Sequence[str],
    transformer: DalleTransformer,
    dvae: DVAE,
    tokenizer,
    candidates: int = 16,
    keep: int = 4,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    condition_scale: float = CONDITION_SCALE,
    clip_model: torch.nn.Module | None = None,
    device: str | None = None,
    progress: bool = False,
) -> list[GenerationResult]:
    """Draw ``candidates`` images per prompt and keep the best ``keep`` (one result per prompt, in order).

    tokenize → sample N code grids (``sampling.sample`` with the given
    temperature, top-k, top-p and condition scale) → decode with the dVAE →
    with ``clip_model``, sort by ``clip.rerank`` and keep the best K with their
    scores; without it, keep the first K in sampling order (scores None).
    Candidates are drawn ``SAMPLE_BATCH`` at a time, so any N fits in memory.
    ``device``: where to run (the models are moved there); by default the
    transformer's device. An empty prompt raises ``ValueError``; a prompt
    longer than the transformer's text length is truncated with a warning.
    ``progress``: a progress bar over the batches, when there is more than one.
    """
    prompts = check_prompts(prompts)
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if not 1 <= keep <= candidates:
        raise ValueError(f"keep must be between 1 and candidates ({candidates}), got {keep}")
    device = device or str(transformer.image_head.weight.device)
    transformer.to(device).eval()
    dvae.to(device).eval()
    if clip_model is not None:
        from .clip import rerank  # lesson 4: imported only when reranking is asked for

        clip_model.to(device).eval()

    from tqdm.auto import tqdm

    per_prompt = -(-candidates // SAMPLE_BATCH) if clip_model is not None else -(-keep // SAMPLE_BATCH)
    bar = tqdm(total=len(prompts) * per_prompt, desc="sampling", unit="batch",
               disable=not progress or len(prompts) * per_prompt < 2)
    results = []
    for prompt in prompts:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # say so for every overlong prompt, not only the first
            text = encode_captions(tokenizer, [prompt], transformer.config.text_len)  # (1, Lt)
        generator = torch.Generator(device=device).manual_seed(seed)
        images, scores = None, None  # the best K so far, best first
        for start in range(0, candidates, SAMPLE_BATCH):  # N <= SAMPLE_BATCH: one batch
            batch, _ = sample_images(transformer, dvae, text.repeat(min(SAMPLE_BATCH, candidates - start), 1),
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     condition_scale=condition_scale, generator=generator)  # (n, H, W, C) uint8
            bar.update(1)
            if clip_model is None:  # the first K in sampling order: the rest need not be drawn
                images = batch if images is None else np.concatenate([images, batch])
                if len(images) >= keep:
                    break
                continue
            batch, batch_scores = rerank(clip_model, tokenizer, prompt, batch)  # best first
            batch_scores = np.asarray(batch_scores, dtype=np.float32)
            if images is not None:  # merge with the best so far (ties: the earlier sample first)
                batch, batch_scores = np.concatenate([images, batch]), np.concatenate([scores, batch_scores])
                order = np.argsort(-batch_scores, kind="stable")
                batch, batch_scores = batch[order], batch_scores[order]
            images, scores = batch[:keep], batch_scores[:keep]
        results.append(GenerationResult(prompt, np.ascontiguousarray(images[:keep]), scores))
    bar.close()
    return results


# ---------------------------------------------------------------------------
# loading the models
# ---------------------------------------------------------------------------

# what creates each model folder, for the error messages
CREATE_COMMANDS = {
    "tokenizer": "dalle-mini-impl train-tokenizer --out {dir}",
    "dvae": "dalle-mini-impl train-dvae --out {dir}",
    "transformer": "dalle-mini-impl train-transformer --dvae {dvae} --out {dir}",
    "clip": "dalle-mini-impl train-clip --out {dir}",
}


def _load(kind: str, load, path: Path, **hint) -> object:
    try:
        return load()
    except (checkpoints.CheckpointError, ValueError, OSError) as err:  # (a broken bpe.json raises ValueError)
        command = CREATE_COMMANDS[kind].format(dir=path, **hint)
        message = str(err).split(". Create it with:")[0].rstrip(".")  # the hint once, with this folder's command
        raise checkpoints.CheckpointError(f"cannot load the {kind}: {message}. Create it with: {command}") from err


def load_clip(model_dir: str | Path, device: str | None = None) -> torch.nn.Module:
    """The CLIP model in ``model_dir``, in eval mode (lesson 4's module, imported only when it is needed)."""
    from .clip import load

    return load(model_dir, device=device)


def trained_on_these_codes(training: dict, dvae) -> bool:
    """Whether a transformer's ``training.json`` names this dVAE's encoder (or, in older records, the whole
    dVAE): the codes it learned are the ones this dVAE produces. True when nothing is recorded."""
    if "dvae_encoder_sha256" in training:
        return training["dvae_encoder_sha256"] == checkpoints.codes_hash(dvae)
    if "dvae_sha256" in training:
        return training["dvae_sha256"] == checkpoints.weights_hash(dvae)
    return True


def load_models(models_dir: str | Path | None = None, device: str | None = None, clip: bool = True) -> Models:
    """Load the tokenizer, dVAE and transformer (and CLIP when ``clip/`` exists) from ``models_dir``.

    ``models_dir`` defaults to the shipped ``data/``. A missing or broken file
    raises ``CheckpointError`` naming it and the command that creates it; a
    transformer built for another tokenizer or dVAE (other vocabulary or grid)
    too. A transformer trained on the codes of *other* dVAE weights only
    warns: it loads, but its images will not look like Shapes.
    """
    root = Path(models_dir) if models_dir is not None else DATA_DIR
    device = device or get_device()
    dirs = {name: root / name for name in ("tokenizer", "dvae", "transformer", "clip")}
    tokenizer = _load("tokenizer", lambda: load_tokenizer(dirs["tokenizer"] / "bpe.json"), dirs["tokenizer"])
    dvae = _load("dvae", lambda: load_dvae(dirs["dvae"], device=device), dirs["dvae"])
    transformer = _load("transformer", lambda: load_transformer(dirs["transformer"], device=device),
                        dirs["transformer"], dvae=dirs["dvae"])
    problems = compatibility_problems(transformer.config, tokenizer, dvae)
    if problems:
        raise checkpoints.CheckpointError(
            f"{dirs['transformer']}: does not fit the other models: " + "; ".join(problems)
            + f". Retrain it with: {CREATE_COMMANDS['transformer'].format(dir=dirs['transformer'], dvae=dirs['dvae'])}"
        )
    if not trained_on_these_codes(checkpoints.training_info(dirs["transformer"]), dvae):
        warnings.warn(f"{dirs['transformer']} was trained on the codes of another dVAE than {dirs['dvae']}; "
                      "its images will not look right. Retrain the transformer on this dVAE.", stacklevel=2)
    clip_model = None
    if clip and dirs["clip"].is_dir():
        clip_model = _load("clip", lambda: load_clip(dirs["clip"], device=device), dirs["clip"])
        clip_vocab = getattr(getattr(clip_model, "config", None), "text_vocab_size", tokenizer.vocab_size)
        if clip_vocab < tokenizer.vocab_size:
            raise checkpoints.CheckpointError(
                f"{dirs['clip']}: CLIP reads {clip_vocab} text ids but the tokenizer has {tokenizer.vocab_size}. "
                f"Retrain it with: {CREATE_COMMANDS['clip'].format(dir=dirs['clip'])}"
            )
        clip_tokenizer = checkpoints.training_info(dirs["clip"]).get("tokenizer_sha256")  # (the shipped CLIP records none)
        if clip_tokenizer and clip_tokenizer != tokenizer_hash(tokenizer):  # same size, other tokens: silent nonsense
            raise checkpoints.CheckpointError(
                f"{dirs['clip']}: this CLIP was trained with another tokenizer than {dirs['tokenizer'] / 'bpe.json'} "
                "(its training.json records another tokenizer_sha256). "
                "Retrain it with this tokenizer (train-all trains every model with one), or use --no-clip"
            )
    return Models(tokenizer, dvae, transformer, clip_model)
