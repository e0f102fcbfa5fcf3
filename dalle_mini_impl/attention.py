"""DALL·E's sparse attention masks and the masked self-attention that uses them (lesson 3).

Scope. The three image-to-image attention patterns of Ramesh et al. 2021,
"Zero-Shot Text-to-Image Generation" (Appendix B.1 and Fig. 11) — row, column
and convolutional — on a small grid, their schedule over the layers, and one
attention layer that applies a static boolean mask through
``torch.nn.functional.scaled_dot_product_attention`` (or, on a GPU, through
``torch.nn.attention.flex_attention`` with a block-sparse mask), with an
optional KV cache for sampling one token at a time.

Letters used in shape comments:
    B   batch size
    Lt  text length (32): text tokens, padded
    G   side of the image grid (8)
    N   image tokens, G·G (64), in raster order: code j sits at cell (j // G, j % G)
    S   the whole sequence, Lt + N (96)
    T   positions in this call (the model input has S - 1 of them, a cached step 1)
    P   positions already in the KV cache before this call
    d   model width, nh heads, hs head size = d / nh

The sequence and the shift
--------------------------
The model reads ``[text | image codes]`` and every position predicts the next
token, so the *input* is the sequence without its last code and position p
predicts token p + 1::

    sequence  t0 t1 … t31 c0 c1 … c62 c63
    input     t0 t1 … t31 c0 c1 … c62          (S - 1 = 95 positions)
    predicts  t1 t2 … c0  c1 c2 … c63

Masks are expressed over **input positions**, and a rule reads the token a
position *holds*: the query at position Lt + i holds code i (cell r, c) and
predicts code i + 1. ``mask[q, k] = True`` means query position q may attend
key position k. The full mask is S × S (one row per sequence position); the
model uses its top-left (S-1) × (S-1) block, a cached step uses one row.

* text → text: causal, ``k <= q``.
* text → image: never (every image position is in a text query's future).
* image → text: always, every text position including pads, in every layer,
  in the same softmax as the image keys (they are keys of one attention).
* image → image, query holding code i, key holding code j, j <= i:
    - ``row``    : ``i - j <= G``, itself and the previous G codes in raster
                   order, a sliding window of G + 1 that reaches the code
                   directly above (not "same row only");
    - ``column`` : ``j ≡ i (mod G)``, itself and the codes above it in its column;
    - ``conv``   : ``|r_i - r_j| <= k // 2`` and ``|c_i - c_j| <= k // 2``, the
                   causal half of a k × k neighbourhood (rows above within
                   reach, and the cells to the left on its own row).
                   Borders are *clipped*, not wrapped: cells outside the grid
                   do not exist, so an edge query sees fewer keys;
    - ``causal`` : every earlier code (plain dense attention, for comparison).

The first image code is predicted by the last *text* position (Lt - 1), a text
query: it sees the whole caption and nothing else, the same in every layer.
Because every rule keeps ``k <= q``, no position ever sees the token it
predicts or anything after it, and a KV cache needs only row q of the mask over
the keys cached so far.

Layer schedule (Appendix B.1): layer i (1-based) of L uses ``column`` when
(i - 2) mod 4 = 0 and ``row`` otherwise; the last layer uses ``conv``. For
L = 4: row, column, row, conv.

Does not handle: the paper's transposed image layout for column attention (an
efficiency trick that gives the same mask), masks for other shapes than
``[text | G×G codes]``, or attention-weight dropout (dropout lives on the
residual branches, so the dense and flex paths compute the same thing).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_KINDS = ("row", "column", "conv", "causal")

try:  # flex attention: torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    FLEX_AVAILABLE = True
except ImportError:  # pragma: no cover - older torch
    FLEX_AVAILABLE = False


# ---------------------------------------------------------------------------
# the masks
# ---------------------------------------------------------------------------


def layer_mask_kinds(n_layers: int) -> list[str]:
    """The paper's schedule: ``column`` when (i - 2) mod 4 = 0, else ``row``; the last layer ``conv``.

    Example: 4 -> ['row', 'column', 'row', 'conv'];
             8 -> ['row', 'column', 'row', 'row', 'row', 'column', 'row', 'conv'].
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layers + 1)]
    kinds[-1] = "conv"
    return kinds


def image_rule(kind: str, grid: int, kernel: int = 5) -> torch.Tensor:
    """Which image codes a code may attend: ``allowed[i, j]``, shape (N, N), N = grid².

    i is the code the query position holds, j the code the key position holds,
    both in raster order (row r = i // G, column c = i % G)::

        row     j <= i  and  i - j <= G
        column  j <= i  and  c_j = c_i
        conv    j <= i  and  |r_i - r_j| <= kernel // 2  and  |c_i - c_j| <= kernel // 2
        causal  j <= i

    Example (grid 2, "column"): [[1,0,0,0], [0,1,0,0], [1,0,1,0], [0,1,0,1]].
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {MASK_KINDS}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the conv kernel must be odd and positive (it is centred on the query), got {kernel}")
    n = grid * grid
    i = torch.arange(n).view(n, 1)  # (N, 1) query codes
    j = torch.arange(n).view(1, n)  # (1, N) key codes
    r_i, c_i, r_j, c_j = i // grid, i % grid, j // grid, j % grid
    causal = j <= i  # (N, N)
    if kind == "row":
        return causal & (i - j <= grid)
    if kind == "column":
        return causal & (c_j == c_i)
    if kind == "conv":
        reach = kernel // 2
        return causal & ((r_i - r_j).abs() <= reach) & ((c_i - c_j).abs() <= reach)
    return causal


def build_mask(kind: str, text_len: int, grid: int, kernel: int = 5) -> torch.Tensor:
    """The S × S boolean mask of one layer over positions ``[text | codes]`` (True = may attend).

    Blocks (rows are queries, columns keys)::

                    text keys        image keys
        text q   [ causal (Lt×Lt)  |  none           ]
        image q  [ all    (N×Lt)   |  image_rule (N×N) ]
    """
    n = grid * grid
    size = text_len + n
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:text_len, :text_len] = torch.ones(text_len, text_len, dtype=torch.bool).tril()
    mask[text_len:, :text_len] = True
    mask[text_len:, text_len:] = image_rule(kind, grid, kernel)
    return mask


def keys_per_query(mask: torch.Tensor) -> torch.Tensor:
    """How many keys each query may attend: the row sums of a mask. (S, S) -> (S,)."""
    return mask.sum(dim=-1)


# What one query position may attend, key by key: the states lesson 3's mask explorer colours.
KEY_BLOCKED, KEY_ALLOWED, KEY_SELF, KEY_FUTURE = 0, 1, 2, 3


def key_states(kind: str, query: int, text_len: int, grid: int, kernel: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """What query position ``query`` may attend under mask ``kind``: (text states (Lt,), image states (G, G)).

    Each key is ``KEY_ALLOWED``, ``KEY_SELF`` (the query's own position),
    ``KEY_FUTURE`` (a later position, never visible) or ``KEY_BLOCKED`` (earlier,
    but outside the mask). Example (row, 4×4 grid, query holding code 5):
    image states [[0, 1, 1, 1], [1, 2, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]].
    """
    S = text_len + grid * grid
    if not 0 <= query < S:
        raise ValueError(f"query must be a position in [0, {S}), got {query}")
    allowed = build_mask(kind, text_len, grid, kernel)[query].numpy()  # (S,)
    positions = np.arange(S)
    states = np.where(allowed, KEY_ALLOWED, KEY_BLOCKED)
    states[positions > query] = KEY_FUTURE
    states[query] = KEY_SELF
    return states[:text_len], states[text_len:].reshape(grid, grid)


# ---------------------------------------------------------------------------
# the KV cache
# ---------------------------------------------------------------------------


class KVCache:
    """Keys and values of one attention layer for the P positions seen so far.

    Allocated once at full length (B, nh, S, hs) so a step writes in place
    instead of concatenating; ``length`` is P, the next free position.
    """

    def __init__(self, batch: int, n_heads: int, max_len: int, head_size: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.k = torch.zeros(batch, n_heads, max_len, head_size, device=device, dtype=dtype)  # (B, nh, S, hs)
        self.v = torch.zeros_like(self.k)  # (B, nh, S, hs)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store T new positions; return every key and value so far, each (B, nh, P + T, hs)."""
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"the KV cache holds {self.k.size(2)} positions; cannot write up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


# ---------------------------------------------------------------------------
# masked self-attention
# ---------------------------------------------------------------------------

_compiled_flex = None  # torch.compile(flex_attention), built on first GPU use
_flex_failed = False  # set when flex could not run here: "auto" then stays dense, having warned once


def _flex_fell_back(err: Exception) -> None:
    """Remember that flex attention failed on this machine and say so, once; "auto" layers use dense from now on."""
    global _flex_failed
    if not _flex_failed:
        warnings.warn(f"flex attention cannot run on this GPU ({type(err).__name__}: {str(err)[:200]}); "
                      "using dense attention, which computes the same", stacklevel=3)
    _flex_failed = True


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """flex_attention, compiled on a GPU (fused block-sparse kernel), eager elsewhere."""
    global _compiled_flex
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager flex materialises the scores and says so: fine off GPU
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask)


def _dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` with a boolean mask, run in fp32 for bf16 inputs on a CPU.

    Under bf16 autocast on a CPU, torch's attention kernel is slow to
    differentiate: forward and backward take 2.4× as long as in fp32 at this
    course's sizes (B 64, 8 heads, 95 positions), while the matrix products
    around it are faster in bf16. Upcasting only this op gets both: a training
    step of the cpu preset runs 1.66× as fast as in fp32, against 1.38× with
    the op in bf16 (``bench/bench_attention.py``, one thread).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention with one static boolean mask::

        Attention(Q, K, V) = softmax(Q Kᵀ / √hs + M) V,   M[q, k] = 0 if mask[q, k] else -∞

    ``backend``: ``"dense"`` (scaled_dot_product_attention with the mask),
    ``"flex"`` (flex_attention with a block mask built from the same mask), or
    ``"auto"`` (flex on a GPU when available, else dense). With a KV cache the
    layer always runs dense over row(s) ``mask[P:P+T, :P+T]``: one new query
    attends only the cached keys its mask row allows.

    Flex attention off a GPU runs eagerly and forward only (torch 2.13 has no
    CPU backward for it), which is why ``"auto"`` picks it only on CUDA; there
    it is compiled once, and blocks of the mask with no allowed entry are
    skipped (worth it when the sequence spans many 128-wide blocks, as the
    paper's 1280 tokens do; at 95 positions it is a single block).
    """

    def __init__(self, d_model: int, n_heads: int, mask: torch.Tensor, dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if backend not in ("auto", "dense", "flex"):
            raise ValueError(f"backend must be 'auto', 'dense' or 'flex', got {backend!r}")
        if backend == "flex" and not FLEX_AVAILABLE:
            raise ValueError("backend='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention); use 'dense'")
        self.n_heads = n_heads
        self.backend = backend
        self.qkv = nn.Linear(d_model, 3 * d_model)  # the three projections in one matmul
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)
        self.register_buffer("mask", mask, persistent=False)  # (S, S) bool, moves with .to(device)
        self._block_masks = {}  # (T, device) -> BlockMask, built on first use

    def use_flex(self, x: torch.Tensor) -> bool:
        if self.backend == "flex":
            return True
        return self.backend == "auto" and FLEX_AVAILABLE and x.is_cuda and not _flex_failed

    def block_mask(self, T: int, device: torch.device):
        """The flex BlockMask of ``mask[:T, :T]``: blocks with no allowed entry are skipped."""
        key = (T, str(device))
        if key not in self._block_masks:
            dense = self.mask[:T, :T].to(device)

            def mask_mod(b, h, q_idx, kv_idx):
                return dense[q_idx, kv_idx]

            self._block_masks[key] = create_block_mask(mask_mod, None, None, T, T, device=device)
        return self._block_masks[key]

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, d = x.shape
        P = 0 if cache is None else cache.length  # positions already cached
        q, k, v = self.qkv(x).split(d, dim=2)  # each (B, T, d)
        q = q.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)  # each (B, nh, P + T, hs)
        y = None
        if cache is None and self.use_flex(x):
            try:
                y = _flex_attention(q, k, v, self.block_mask(T, x.device))  # (B, nh, T, hs)
            except Exception as err:  # a GPU where the kernel cannot be built (e.g. no Triton for it)
                if self.backend == "flex":
                    raise
                _flex_fell_back(err)
        if y is None:
            allowed = self.mask[P:P + T, :P + T]  # (T, P + T), broadcast over B and nh
            y = _dense_attention(q, k, v, allowed)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, d): heads side by side again
        return self.resid_drop(self.proj(y))
