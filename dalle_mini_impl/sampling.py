"""Drawing image codes from the transformer (lesson 3): the plain loop, then the KV cache.

Scope. Autoregressive sampling of the N = G·G image codes that follow a
caption, as in Ramesh et al. 2021 (§2.2 and §2.6), with the usual knobs:
temperature, top-k, top-p (nucleus) and a condition scale ("super-conditioning",
also called classifier-free guidance)::

    logits = uncond + s · (cond - uncond)

where cond are the logits given the caption and uncond those given the empty
caption (the model learned both: ``transformer.drop_captions``). s = 1 is plain
conditional sampling; s > 1 pushes the image towards the caption.

Two samplers, one result:
  * ``sample_reference`` recomputes the whole prefix at every step. It is the
    algorithm, line by line.
  * ``sample`` keeps each layer's keys and values (a KV cache), so a step runs
    one new position through the network. The masks are static, so the new
    query at position p only needs row p of its layer's mask over the p + 1
    cached keys; this works for row, column and conv layers alike.
With the same ``torch.Generator`` seed both return the same codes.

Letters used in shape comments:
    B   batch size (prompts × candidates), B2 = 2B when the condition scale is on
    Lt  text length, G grid side, N = G·G codes, d model width, Vi image vocabulary

Does not handle: image prompts (priming with given codes), beam search, or
sampling the caption itself (the text is always given).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import CONDITION_SCALE, TEMPERATURE  # noqa: F401  (the sampling defaults, read from here)
from .images import to_uint8_images
from .transformer import DalleTransformer, empty_text

if TYPE_CHECKING:
    from .dvae import DVAE

# ---------------------------------------------------------------------------
# the pieces of one step
# ---------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the others to -∞. (B, V) -> (B, V).

    Exactly k survive (ties at the boundary are broken by ``torch.topk``).
    Example (k=2): [1.0, 3.0, 2.0, 0.5] -> [-inf, 3.0, 2.0, -inf].
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    k = min(k, logits.size(-1))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the fewest most likely tokens whose probabilities sum to >= p.

    A token is dropped when the tokens more likely than it already sum to >= p,
    so the most likely token always survives. (B, V) -> (B, V).
    Example (p=0.7, probabilities [0.1, 0.6, 0.3]): keeps 0.6 and 0.3 (0.6 < 0.7 <= 0.9).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked above
    drop_sorted = mass_before >= p  # (B, V)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Super-conditioning: uncond + s · (cond - uncond). s = 1 gives cond, s = 0 gives uncond."""
    return uncond + scale * (cond - uncond)


def pick_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
              top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sampling step on the last logits: temperature -> top-k -> top-p -> softmax -> multinomial.

    logits (B, V) -> ids (B, 1). The same steps as the loop in ``sample_reference``.
    """
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


def _check_knobs(model: DalleTransformer, text: torch.Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; for greedy decoding use top_k=1")
    if text.dim() != 2 or text.size(1) != model.config.text_len:
        raise ValueError(f"text must be (B, {model.config.text_len}) ids, got {tuple(text.shape)}; "
                         "use transformer.encode_captions(tokenizer, captions)")


# ---------------------------------------------------------------------------
# the reference sampler: recompute everything, every step
# ---------------------------------------------------------------------------


@torch.no_grad()
def sample_reference(model: DalleTransformer, text: torch.Tensor, *, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, condition_scale: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample code grids for captions ``text`` (B, Lt), recomputing the prefix each step.

    Returns LongTensor (B, G, G). ``generator`` (on the model's device) makes it repeatable.
    """
    _check_knobs(model, text, temperature)
    was_training, device = model.training, model.image_head.weight.device
    model.eval()  # no dropout while sampling
    B, G = text.size(0), model.config.grid
    text = text.to(device)
    guided = condition_scale != 1.0
    if guided:  # the same codes continue the caption and the empty caption
        text = torch.cat([text, empty_text(B, model.config, device)])  # (B2, Lt)
    codes = text.new_zeros(B, 0)  # (B, 0): the codes drawn so far
    for _ in range(G * G):
        prefix = codes.repeat(2, 1) if guided else codes  # (B or B2, j)
        _, image_logits = model(text, prefix)  # (B or B2, j + 1, Vi): the whole prefix again
        logits = image_logits[:, -1, :]  # (B or B2, Vi): the prediction for the next code
        if guided:
            cond, uncond = logits.chunk(2)  # (B, Vi) each
            logits = guided_logits(cond, uncond, condition_scale)  # (B, Vi)
        logits = logits / temperature  # < 1 sharpens, > 1 flattens the distribution
        if top_k is not None:
            logits = top_k_filter(logits, top_k)  # only the k most likely codes remain
        if top_p is not None:
            logits = top_p_filter(logits, top_p)  # only the smallest set holding mass p remains
        probs = F.softmax(logits, dim=-1)  # (B, Vi), -inf logits get probability 0
        next_code = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
        codes = torch.cat([codes, next_code], dim=1)  # (B, j + 1): append and go on
    model.train(was_training)
    return codes.view(B, G, G)  # (B, G, G) raster order


# ---------------------------------------------------------------------------
# the fast sampler: a KV cache per layer, one new position per step
# ---------------------------------------------------------------------------


@torch.no_grad()
def sample(model: DalleTransformer, text: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, condition_scale: float = 1.0,
           generator: torch.Generator | None = None,
           callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Sample code grids for captions ``text`` (B, Lt) with a KV cache. Returns LongTensor (B, G, G).

    Same arguments and, for the same generator state, the same codes as
    ``sample_reference``. Repeat a caption for several candidates:
    ``sample(model, text.repeat_interleave(n, dim=0), generator=g)``.
    ``callback(j, codes)``, if given, is called after code j is drawn with the
    codes so far, (B, j + 1) in raster order: to watch the grid fill.
    """
    _check_knobs(model, text, temperature)
    was_training, device = model.training, model.image_head.weight.device
    model.eval()
    B, N = text.size(0), model.config.n_image
    text = text.to(device)
    guided = condition_scale != 1.0
    if guided:
        text = torch.cat([text, empty_text(B, model.config, device)])  # (B2, Lt)
    caches = model.new_caches(text.size(0))
    h = model.run_blocks(model.embed_text(text), caches)  # (B or B2, Lt, d): the caption, once
    codes = torch.zeros(B, N, dtype=torch.long, device=device)  # (B, N), filled in raster order
    for j in range(N):
        logits = model.image_head(h[:, -1])  # (B or B2, Vi): the prediction for code j
        if guided:
            logits = guided_logits(*logits.chunk(2), condition_scale)  # (B, Vi)
        codes[:, j:j + 1] = pick_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
        if callback is not None:
            callback(j, codes[:, :j + 1].clone())
        if j + 1 < N:  # feed code j at its position; its query attends the cached keys its mask row allows
            new = codes[:, j:j + 1].repeat(2, 1) if guided else codes[:, j:j + 1]  # (B or B2, 1)
            h = model.run_blocks(model.embed_image(new, start=j), caches)  # (B or B2, 1, d)
    model.train(was_training)
    return codes.view(B, model.config.grid, model.config.grid)  # (B, G, G)


@torch.no_grad()
def cached_image_logits(model: DalleTransformer, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Image logits for *given* codes, computed one position at a time through the KV cache.

    text (B, Lt), codes (B, N) or (B, G, G) -> (B, N, Vi): row j predicts code j.
    Equal (to float tolerance) to ``model(text, codes)[1]``: the check that the
    cache computes what the full forward computes.
    """
    was_training, device = model.training, model.image_head.weight.device
    model.eval()
    text, codes = text.to(device), codes.to(device).flatten(1)  # (B, Lt), (B, N)
    caches = model.new_caches(text.size(0))
    rows = [model.image_head(model.run_blocks(model.embed_text(text), caches)[:, -1])]  # [(B, Vi)]
    for j in range(codes.size(1) - 1):
        h = model.run_blocks(model.embed_image(codes[:, j:j + 1], start=j), caches)  # (B, 1, d)
        rows.append(model.image_head(h[:, -1]))  # (B, Vi)
    model.train(was_training)
    return torch.stack(rows, dim=1)  # (B, N, Vi)


# ---------------------------------------------------------------------------
# codes -> pictures
# ---------------------------------------------------------------------------


def partial_grids(prefixes, grid: int, fill_code: int) -> torch.Tensor:
    """Code prefixes (each (k,), the first k codes in raster order) -> full grids (P, G, G), the rest ``fill_code``.

    What a grid looks like while it is being drawn (decode it with ``codes_to_images``).
    Example (grid 2, fill 0): [[5], [5, 6, 7]] -> [[[5, 0], [0, 0]], [[5, 6], [7, 0]]].
    """
    grids = torch.full((len(prefixes), grid * grid), int(fill_code), dtype=torch.long)  # (P, N)
    for p, prefix in enumerate(prefixes):
        prefix = torch.as_tensor(prefix).long().flatten()
        grids[p, :len(prefix)] = prefix
    return grids.view(len(prefixes), grid, grid)


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


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``: its own random stream, apart from the global one."""
    return torch.Generator(device=device).manual_seed(seed)
