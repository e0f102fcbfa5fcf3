"""The discrete VAE of DALL·E (lesson 2): 64×64 images ⇄ an 8×8 grid of codebook ids.

Scope. Stage one of Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"
(§2.1 and Appendix A), scaled down to the Shapes dataset: a ResNet encoder
turns an image into K logits per grid cell, a gumbel-softmax relaxation makes
the choice of one code per cell differentiable, and a ResNet decoder turns the
(soft) one-hot grid back into an image whose pixels follow a logit-Laplace
distribution. The transformer of lesson 3 never sees pixels, only
``encode(images)``: the argmax codes.

Letters used in shape comments:
    B  batch size
    C  image channels (3, RGB)
    H, W  image height and width (64)
    h, w  grid height and width (H / f = 8)
    f  downsampling factor (8)
    K  codebook size, the number of image tokens (512)
    D  codebook dimension (width of the decoder's first 1×1 conv)
    N  channels of a hidden feature map

The training objective (the negative ELBO of the paper, per image, divided by
the number of pixel values H·W·C as the paper does)::

    loss = ( -Σ_pixels ln p(x | z)  +  β · Σ_cells KL(q(z | x) ‖ U(K)) ) / (H·W·C)

averaged over the batch, with z a gumbel-softmax sample at temperature τ.

Where the paper and a popular re-implementation disagree, this file follows the
paper (each place says why):
  * the KL term is summed over the h·w cells of one image and divided by H·W·C
    like the reconstruction term, then averaged over the batch. Summing it over
    the batch as well (``F.kl_div(..., "batchmean")`` with a 1-element input)
    makes its weight grow with the batch size and dwarf a per-pixel-mean
    reconstruction loss; β = 6.6 only means what the paper means with this
    reduction (see ``kl_to_uniform``);
  * the relaxation is soft (no straight-through) by default: the paper uses
    the relaxed sample in the forward pass too; ``hard=True`` is an option;
  * the likelihood is logit-Laplace on pixels mapped into [ε, 1-ε], not MSE
    (MSE stays available as ``likelihood="mse"``);
  * tokens are the argmax of the encoder logits, without gumbel noise.

Where this file departs from the paper, because a run here lasts an hour on a
CPU instead of 3M steps on GPUs (the first two are config fields, so the
paper's choice is one setting away):
  * the features are standardised (or centred) before the logits conv (``logits_norm``):
    without it, every cell's logits share one large component (positive
    ReLU features, mostly-white images) that Adam at a high learning rate
    grows until all cells pick the same few codes;
  * a 10× larger learning rate, warm-up + cosine decay (the paper: 1e-4);
  * the logits head and the output head run in fp32 under bf16 autocast;
  * a "diversity" term on the batch-average code usage (``diversity_weight``,
    0.1 in the ``cpu`` preset, 0 in the dataclass; see ``usage_kl_to_uniform``).

Does not handle: images of another size than ``config.image_size`` (resize
first), the paper's mixed-precision gradient scaling per resblock, the
Adam-moment tricks of its Appendix A, or an EMA of the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import DATA_DIR, checkpoints, get_device
from .images import to_uint8_images
from .train_common import cosine
from .train_common import lr_at as warmup_cosine

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


PIXEL_ERRORS = {"mse": F.mse_loss, "l1": F.l1_loss}  # the likelihoods that are a plain error on the pixel means
LOGITS_NORMS = ("centre", "batch", "none")
LIKELIHOODS = ("logit_laplace", *PIXEL_ERRORS)


@dataclass
class DVAEConfig:
    """Everything that defines a dVAE and its training objective.

    Use a preset: ``DVAEConfig.preset("cpu")`` (the default, trains on a laptop
    CPU) or ``DVAEConfig.preset("gpu")`` (wider and deeper).
    """

    image_size: int = 64  # H = W
    channels: int = 3  # C
    downsample: int = 8  # f: 64 / 8 = an 8×8 grid of codes, as the course's transformer expects
    vocab_size: int = 512  # K: codebook size (the paper: 8192 for 32×32 grids of 256×256 images)
    codebook_dim: int = 128  # D: the paper's n_init
    enc_width: int = 32  # encoder channels at full resolution, doubled after each 2× downsampling
    dec_width: int = 64  # decoder channels at full resolution, doubled going back up (drawing sharp
    #                      outlines takes more width than recognising them: 32 left shapes as blobs)
    blocks_per_group: int = 1  # resblocks per resolution (the paper: 2)
    res_gain: float | None = 1.0  # scale of each resblock's residual branch; None = the paper's 1 / L²
    #                               (L = number of resblocks), which keeps a 4-block net close to a stack
    #                               of 1×1 convs for most of a short run (measured: a continuous autoencoder
    #                               with these nets read back 34% of images after 1000 steps at 1 / L²,
    #                               79% at gain 1 with dec_width 64)
    likelihood: str = "logit_laplace"  # or "mse" / "l1": a plain error on the decoded pixel means
    eps: float = 0.1  # ε of the pixel map x -> (1 - 2ε) x + ε (the paper's value)
    min_log_b: float = -6.0  # floor of ln b of the logit-Laplace: keeps 1/b finite on flat colour
    kl_weight: float = 6.6  # β at the end of its ramp (the paper's value, with the paper's reduction)
    kl_ramp_frac: float = 0.05  # β rises 0 -> kl_weight over this fraction of the steps (cosine)
    tau_start: float = 1.0  # τ of the gumbel-softmax at step 0
    tau_end: float = 1.0 / 16  # τ after annealing: small enough that soft ≈ argmax (the paper)
    tau_anneal_frac: float = 0.4  # τ anneals over this fraction, then stays at tau_end so the
    #                               decoder learns from nearly one-hot inputs, which is what
    #                               argmax decoding feeds it (the paper: 150k of 3M steps)
    hard: bool = False  # straight-through gumbel-softmax instead of the paper's soft relaxation
    logits_norm: str | bool = "batch"  # what happens to the features before the logits conv, not in the paper:
    #                              ReLU features are positive and most cells are white background, so every
    #                              cell's logits share one big component; Adam grows it and all cells fall
    #                              onto a handful of codes within ~100 steps. "centre" subtracts each
    #                              feature's mean over the batch and the grid (a running mean at encode
    #                              time); "batch" also divides by the standard deviation (a BatchNorm
    #                              without affine: the shipped model's); "none": the paper's head.
    #                              "batch" can misread argmax codes while the features still move fast:
    #                              its running variance lags the batch's, and a feature almost always 0
    #                              has a tiny one (measured at one checkpoint of a 16x16 run: 52% of the
    #                              codes changed, 78% of round trips graded correct with the batch's
    #                              statistics, 24% with the running ones; 200 steps later both agreed).
    #                              data/dvae/README.md compares the two in training.
    diversity_weight: float = 0.0  # weight of KL(batch-average q ‖ uniform), not in the paper (0 = off):
    #                                  pushes the encoder to spread cells over many codes (the cpu preset:
    #                                  0.1: in the same 3500-step run, 285 codes in use instead of 79 and
    #                                  88% of reconstructions graded correct instead of 78% by the earlier,
    #                                  lenient grader; data/dvae/README.md)
    restart_every: int = 100  # every this many steps, codes unused since the last restart are re-seeded as
    #                            copies of the codes of badly reconstructed cells (0 = off, not in the
    #                            paper; see ``restart_dead_codes``)
    edge_weight: float = 0.0  # pixel errors (mse/l1) count this much extra on edge pixels (see edge_map), not
    #                             in the paper: corners and the arms of crosses are a few pixels of a mostly
    #                             white image, so a plain mean barely notices them rounded
    logit_lr_mult: float = 1.0  # learning-rate multiplier of the logits conv (1 = same as the rest)
    logit_init_scale: float = 0.1  # the 1×1 logits conv starts this small, else the logits
    #                                  saturate at init and the relaxation stops learning
    lr: float = 1e-3  # peak AdamW learning rate (the paper: 1e-4 for a far longer run)
    lr_end_frac: float = 0.05  # cosine decay of the lr down to lr * lr_end_frac
    warmup_frac: float = 0.02  # linear lr warm-up
    weight_decay: float = 1e-4  # the paper's value

    @property
    def grid_size(self) -> int:
        """h = w = H / f."""
        return self.image_size // self.downsample

    @property
    def n_groups(self) -> int:
        """Resolutions visited: f = 2^(n_groups - 1)."""
        return int(math.log2(self.downsample)) + 1

    def __post_init__(self) -> None:
        f = self.downsample
        if f < 1 or f & (f - 1) or self.image_size % f:
            raise ValueError(f"downsample must be a power of 2 dividing image_size, got f={f}, H={self.image_size}")
        if isinstance(self.logits_norm, bool):  # configs written before "centre": True meant a BatchNorm
            self.logits_norm = "batch" if self.logits_norm else "none"
        if self.logits_norm not in LOGITS_NORMS:
            raise ValueError(f"logits_norm must be one of {', '.join(LOGITS_NORMS)}, got {self.logits_norm!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")

    @classmethod
    def preset(cls, name: str = "cpu", **overrides) -> DVAEConfig:
        """``cpu``: 3500 steps train in ~50 min on one CPU core. ``gpu``: wider, deeper, for a GPU."""
        presets = {
            "cpu": {"diversity_weight": 0.1},
            "gpu": {"enc_width": 64, "dec_width": 128, "codebook_dim": 256, "blocks_per_group": 2, "lr": 5e-4},
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# the pixel map and the logit-Laplace likelihood
# ---------------------------------------------------------------------------


def map_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """φ(x) = (1 - 2ε) x + ε: squeeze [0, 1] into [ε, 1 - ε].

    The logit-Laplace density lives on the open interval (0, 1) and its log
    goes to -∞ at 0 and 1, where most Shapes pixels (white background) sit.
    Example (ε = 0.1): [0.0, 0.5, 1.0] -> [0.1, 0.5, 0.9].
    """
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """φ⁻¹(x) = clamp((x - ε) / (1 - 2ε), 0, 1), the inverse of ``map_pixels``."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


def pixel_mean(mu: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """x̂ = φ⁻¹(sigmoid(μ)), the decoder's pixel mean, NOT clamped to [0, 1].

    A loss on it must see the unclamped value: clamping first would zero the
    gradient of every pixel pushed past 0 or 1. ``unmap_pixels`` clamps.
    """
    return (torch.sigmoid(mu) - eps) / (1 - 2 * eps)


def edge_map(images: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """1.0 on pixels whose 3×3 neighbourhood holds two different colours, else 0.0: shape (B, 1, H, W).

    ``images`` (B, C, H, W) in [0, 1]. A pixel is on an edge when, in some channel,
    the brightest and darkest pixels around it differ by more than ``threshold``.
    Example: a white image with one red pixel -> 1 on that pixel and its 8 neighbours.
    """
    hi = F.max_pool2d(images, 3, stride=1, padding=1)  # (B, C, H, W)
    lo = -F.max_pool2d(-images, 3, stride=1, padding=1)
    return ((hi - lo).amax(dim=1, keepdim=True) > threshold).float()  # (B, 1, H, W)


def pixel_error(x_mean: torch.Tensor, images: torch.Tensor, kind: str = "mse", edge_weight: float = 0.0) -> torch.Tensor:
    """The mean squared ("mse") or absolute ("l1") error, edge pixels counting 1 + ``edge_weight`` times.

    Weighted by w = 1 + edge_weight · edge_map(images) and divided by the mean of w,
    so a flat image's loss does not depend on ``edge_weight``.
    """
    error = PIXEL_ERRORS[kind](x_mean, images, reduction="none")  # (B, C, H, W)
    if not edge_weight:
        return error.mean()
    w = 1.0 + edge_weight * edge_map(images)  # (B, 1, H, W)
    return (error * w).mean() / w.mean()


def logit_laplace_log_prob(x: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Log density of the logit-Laplace distribution, elementwise.

    For x in (0, 1), with location μ and scale b (both in logit space)::

        f(x | μ, b) = 1 / (2 b x (1 - x)) · exp(-|logit(x) - μ| / b)
        ln f        = -ln 2 - ln b - ln x - ln(1 - x) - |logit(x) - μ| / b

    x is a *mapped* pixel (``map_pixels``), so it never touches 0 or 1.
    """
    logit_x = torch.log(x) - torch.log1p(-x)
    return -math.log(2.0) - log_b - torch.log(x) - torch.log1p(-x) - (logit_x - mu).abs() * torch.exp(-log_b)


# ---------------------------------------------------------------------------
# the relaxation, its schedules, and the prior term
# ---------------------------------------------------------------------------


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False, dim: int = 1) -> torch.Tensor:
    """A differentiable sample from the categorical softmax(logits) (Jang et al.; Maddison et al.).

    With g_k = -ln(-ln u_k), u_k ~ U(0, 1) i.i.d.::

        y_k = exp((l_k + g_k) / τ) / Σ_j exp((l_j + g_j) / τ)

    argmax_k y_k is an exact sample of softmax(l) (the gumbel-max trick); as
    τ -> 0, y tends to that one-hot vector. ``hard=True`` returns the one-hot
    vector in the forward pass and the gradient of the soft y in the backward
    pass (straight-through): ``y_hard - y.detach() + y``.
    """
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)  # keep ln(-ln u) finite
    g = -torch.log(-torch.log(u))
    y = F.softmax((logits + g) / tau, dim=dim)
    if hard:
        index = y.argmax(dim=dim, keepdim=True)
        y_hard = torch.zeros_like(y).scatter_(dim, index, 1.0)
        y = y_hard - y.detach() + y
    return y


def gumbel_softmax_samples(logits, tau: float, n: int, hard: bool = False, seed: int = 0) -> torch.Tensor:
    """``n`` gumbel-softmax samples of softmax(``logits``) (K,) at temperature ``tau``: (n, K).

    The noise comes from ``seed``, without touching the global random state,
    so every ``tau`` gets the *same* draws: lowering it sharpens each sample
    towards the one-hot vector of its gumbel-max winner.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32).flatten()  # (K,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return gumbel_softmax(logits.expand(n, len(logits)), tau, hard=hard, dim=-1)  # (n, K)


def gumbel_softmax_sharpness(logits, taus, n: int = 2000, seed: int = 0) -> list[float]:
    """How one-hot the samples are at each τ of ``taus``: the mean largest entry of ``n`` soft samples.

    1 for one-hot samples (τ -> 0), 1/K for flat ones (τ -> ∞). Example:
    logits of 4 equal entries, τ = 100 -> about 0.25.
    """
    return [float(gumbel_softmax_samples(logits, float(t), n, seed=seed).max(-1).values.mean()) for t in taus]


def tau_at(step: int, total_steps: int, config: DVAEConfig) -> float:
    """τ: cosine 1 -> 1/16 over the first ``tau_anneal_frac`` of training."""
    return cosine(step, round(config.tau_anneal_frac * total_steps), config.tau_start, config.tau_end)


def kl_weight_at(step: int, total_steps: int, config: DVAEConfig) -> float:
    """β: cosine 0 -> 6.6 over the first ``kl_ramp_frac`` of training."""
    return cosine(step, round(config.kl_ramp_frac * total_steps), 0.0, config.kl_weight)


def lr_at(step: int, total_steps: int, config: DVAEConfig) -> float:
    """Learning rate: the course's linear warm-up, then cosine down to ``lr * lr_end_frac`` (``train_common.lr_at``)."""
    return warmup_cosine(step, total_steps, config.lr, config.warmup_frac, config.lr_end_frac)


def schedules(total_steps: int, config: DVAEConfig) -> dict[str, list[float]]:
    """The three schedules of a run, one value per step, ready to plot: ``{"lr", "tau", "kl_weight"}``."""
    steps = range(total_steps)
    return {
        "lr": [lr_at(s, total_steps, config) for s in steps],
        "tau": [tau_at(s, total_steps, config) for s in steps],
        "kl_weight": [kl_weight_at(s, total_steps, config) for s in steps],
    }


def saturation_penalty(mu: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Mean of (|μ| - logit(1 - ε))², over the pixel logits μ outside the map's range, 0 inside.

    With a pixel error (``likelihood="mse"`` or ``"l1"``) the decoder's mean is
    φ⁻¹(sigmoid(μ)), and no pixel needs |μ| beyond logit(1 - ε) (ln 9 for
    ε = 0.1). Early in a run the decoder paints everything white, the colour of
    most pixels; if μ overshoots far past ln 9 the sigmoid saturates, the
    error's gradient vanishes, and the decoder stays white for good (measured:
    a 4096-code run stuck at μ between 15 and 234 after 500 steps). This
    term's gradient grows with the overshoot, so μ always comes back.
    """
    return F.relu(mu.abs() - math.log((1 - eps) / eps)).pow(2).mean()


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ U(K)) per image, summed over the grid: shape (B,).

    With q = softmax(logits) over the K codes of one cell::

        KL(q ‖ U) = Σ_k q_k ln(q_k / (1/K)) = Σ_k q_k ln q_k + ln K     (0 <= KL <= ln K)

    summed over the h·w cells of an image. The loss divides it by H·W·C, like
    the reconstruction term, and averages over the batch — the paper's
    reduction, so the balance of the two terms does not depend on the batch
    size. (Summing over the batch too, as a popular re-implementation does,
    multiplies β by B relative to a per-pixel-mean reconstruction.)
    """
    log_q = F.log_softmax(logits, dim=1)  # (B, K, h, w)
    kl = (log_q.exp() * log_q).sum(dim=1) + math.log(logits.shape[1])  # (B, h, w)
    return kl.flatten(1).sum(dim=1)  # (B,)


def usage_kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q̄ ‖ U(K)) of the *average* assignment q̄ = mean over the batch and the grid of softmax(logits).

    Zero when the batch as a whole uses every code equally often, ln K when it
    uses one code. Unlike ``kl_to_uniform`` (which is the same for one
    confident code everywhere and for many confident codes), it rewards using
    many codes across cells (a "diversity" term, as in wav2vec 2.0).
    """
    q_mean = F.softmax(logits, dim=1).mean(dim=(0, 2, 3))  # (K,)
    return (q_mean * torch.log(q_mean + 1e-12)).sum() + math.log(logits.shape[1])


# ---------------------------------------------------------------------------
# the networks
# ---------------------------------------------------------------------------


def full_precision(x: torch.Tensor):
    """A context that turns autocast off, so the 1×1 heads and the losses run in fp32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class BottleneckBlock(nn.Module):
    """x -> id(x) + g · res(x), the paper's resblock.

    res is four convolutions with ReLUs before each, narrowed to N_out/4
    channels inside (a bottleneck); id is a 1×1 conv when the width changes.
    The residual branch is scaled by g = 1 / L² (L = the number of blocks in
    the network, the paper's post-gain) so that a deep stack starts close to
    the identity and trains stably without normalisation layers.
    The encoder uses kernel sizes (3, 3, 3, 1), the decoder (1, 3, 3, 3).
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int], gain: float | None = None):
        super().__init__()
        n_hid = max(n_out // 4, 1)
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        layers = []
        for i, k in enumerate(kernels):
            layers += [nn.ReLU(), nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2)]
        self.res_path = nn.Sequential(*layers)
        self.post_gain = 1.0 / n_layers**2 if gain is None else gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)  # (B, N_out, ., .)


class Centre(nn.Module):
    """x - the mean of each channel: over the batch and the grid in training, a running mean in eval mode.

    A BatchNorm that does not divide by the standard deviation. Dividing is what
    makes a BatchNorm's eval mode disagree with its training mode here: a
    feature that is almost always 0 has a tiny variance, so a small change of
    it rescales that feature's contribution to the logits many times over.
    Example: channels with means [1, 3] -> the same inputs minus [1, 3].
    """

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, h, w)
        if self.training:
            mean = x.mean(dim=(0, 2, 3))  # (N,)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().float(), self.momentum)
        else:
            mean = self.running_mean.to(x.dtype)
        return x - mean[None, :, None, None]


class Encoder(nn.Module):
    """(B, C, H, W) mapped pixels -> (B, K, h, w) logits.

    7×7 conv, then ``n_groups`` groups of resblocks at widths N, 2N, 4N, ...
    with a 2× max-pool between groups, then ReLU and a 1×1 conv to K logits.
    """

    def __init__(self, config: DVAEConfig):
        super().__init__()
        G, n, L = config.n_groups, config.enc_width, config.n_groups * config.blocks_per_group
        self.stem = nn.Conv2d(config.channels, n, 7, padding=3)
        groups, n_in = [], n
        for g in range(G):
            n_out = n * 2**g
            blocks = [BottleneckBlock(n_in if b == 0 else n_out, n_out, L, (3, 3, 3, 1), config.res_gain) for b in range(config.blocks_per_group)]
            if g < G - 1:
                blocks.append(nn.MaxPool2d(2))
            groups.append(nn.Sequential(*blocks))
            n_in = n_out
        self.groups = nn.Sequential(*groups)
        norm = {"centre": lambda: Centre(n_in), "batch": lambda: nn.BatchNorm2d(n_in, affine=False), "none": nn.Identity}
        self.to_logits = nn.Sequential(nn.ReLU(), norm[config.logits_norm](), nn.Conv2d(n_in, config.vocab_size, 1, bias=config.logits_norm == "none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, N, H, W)
        x = self.groups(x)  # (B, N·2^(G-1), h, w)
        with full_precision(x):  # logits feed a softmax at τ = 1/16: keep them fp32 under autocast
            return self.to_logits(x.float())  # (B, K, h, w)


class Decoder(nn.Module):
    """(B, K, h, w) (soft) one-hot codes -> (B, 2C, H, W) pixel statistics.

    A 1×1 conv from K channels to D: applied to a one-hot vector it *selects*
    one column of its weight, so that weight (D, K) is the codebook (see
    ``DVAE.decode``). Then groups of resblocks at widths ..., 4N, 2N, N with a
    nearest-neighbour 2× upsampling between groups (it copies pixels, it does
    not blur: the convolutions after it decide where edges go), then ReLU and
    a 1×1 conv to 2C channels: μ and ln b of the logit-Laplace per pixel value.
    """

    def __init__(self, config: DVAEConfig):
        super().__init__()
        G, n, L = config.n_groups, config.dec_width, config.n_groups * config.blocks_per_group
        self.codebook = nn.Conv2d(config.vocab_size, config.codebook_dim, 1, bias=False)
        groups, n_in = [], config.codebook_dim
        for g in range(G):
            n_out = n * 2 ** (G - 1 - g)
            blocks = [BottleneckBlock(n_in if b == 0 else n_out, n_out, L, (1, 3, 3, 3), config.res_gain) for b in range(config.blocks_per_group)]
            if g < G - 1:
                blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
            groups.append(nn.Sequential(*blocks))
            n_in = n_out
        self.groups = nn.Sequential(*groups)
        self.to_stats = nn.Sequential(nn.ReLU(), nn.Conv2d(n_in, 2 * config.channels, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.codebook(z)  # (B, D, h, w)
        return self.decode_embedded(x)  # (B, 2C, H, W)

    def decode_embedded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(x)  # (B, N, H, W)
        with full_precision(x):  # μ in bf16 is off by ~0.01, far more than a sharp b allows: fp32
            return self.to_stats(x.float())  # (B, 2C, H, W)


@dataclass
class DVAEOutput:
    """What one training forward pass returns (every loss is a scalar tensor)."""

    loss: torch.Tensor  # the objective: (recon + β·kl) per pixel value, batch mean
    recon: torch.Tensor  # -ln p(x|z) per pixel value (or the MSE), batch mean
    kl: torch.Tensor  # Σ_cells KL(q‖U) / (H·W·C), batch mean
    logits: torch.Tensor  # (B, K, h, w)
    x_rec: torch.Tensor  # (B, C, H, W) in [0, 1]: the reconstruction from the relaxed sample
    extras: dict = field(default_factory=dict)


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: w ~ N(0, 1 / fan_in), b = 0 (fan_in = n_in · k²).

    It keeps the scale of activations through a stack of convolutions, where
    PyTorch's default (uniform, std 1 / sqrt(3 · fan_in)) shrinks them about
    1.7× per layer and leaves the logits ~50× smaller than the gumbel noise.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DVAE(nn.Module):
    """The discrete VAE: ``encode`` images to codes, ``decode`` codes to images, and the training loss."""

    def __init__(self, config: DVAEConfig | None = None):
        super().__init__()
        self.config = config or DVAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        init_weights(self)
        with torch.no_grad():  # small logits at init: the softmax must not start saturated
            self.encoder.to_logits[-1].weight.mul_(self.config.logit_init_scale)

    # -- the training pass ---------------------------------------------------

    def forward(self, images: torch.Tensor, tau: float = 1.0, kl_weight: float = 0.0) -> DVAEOutput:
        """Negative ELBO of a batch of images in [0, 1], shape (B, C, H, W)."""
        cfg = self.config
        x = map_pixels(images, cfg.eps)  # (B, C, H, W) in [ε, 1-ε]
        logits = self.encoder(x)  # (B, K, h, w)
        z = gumbel_softmax(logits, tau, hard=cfg.hard, dim=1)  # (B, K, h, w), rows sum to 1
        stats = self.decoder(z)  # (B, 2C, H, W)
        mu, log_b = stats.chunk(2, dim=1)  # (B, C, H, W) each
        x_mean = pixel_mean(mu, cfg.eps)  # (B, C, H, W), not clamped yet
        if cfg.likelihood == "logit_laplace":
            log_b = log_b.clamp(min=cfg.min_log_b)
            recon = -logit_laplace_log_prob(x, mu, log_b).mean()  # mean over B, C, H, W
        else:  # "mse" or "l1" on the unclamped means
            recon = pixel_error(x_mean, images, cfg.likelihood, cfg.edge_weight)
        x_rec = x_mean.clamp(0, 1)  # (B, C, H, W) in [0, 1]
        kl = kl_to_uniform(logits).mean() / (cfg.channels * cfg.image_size**2)  # Σ_cells KL / (H·W·C), batch mean
        loss = recon + kl_weight * kl
        extras = {}
        if cfg.likelihood in PIXEL_ERRORS:  # a pixel error has no gradient once the sigmoid saturates:
            # push μ back inside the map's range [logit ε, logit 1-ε] (see saturation_penalty)
            extras["saturation"] = saturation_penalty(mu, cfg.eps)
            loss = loss + extras["saturation"]
        if cfg.diversity_weight:  # not in the paper: see DVAEConfig.diversity_weight
            extras["usage_kl"] = usage_kl_to_uniform(logits)
            loss = loss + cfg.diversity_weight * extras["usage_kl"]
        return DVAEOutput(loss=loss, recon=recon, kl=kl, logits=logits, x_rec=x_rec, extras=extras)

    # -- what the rest of the course uses --------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> codes (B, h, w), long: the argmax of the logits, no noise.

        Always in eval mode (the logits head uses its running statistics), so a code never
        depends on the other images of the batch.
        """
        was_training = self.encoder.training
        self.encoder.eval()
        logits = self.encoder(map_pixels(images, self.config.eps))  # (B, K, h, w)
        self.encoder.train(was_training)
        return logits.argmax(dim=1)  # (B, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, C, H, W) in [0, 1].

        Multiplying a one-hot vector by the codebook conv's weight is picking
        one of its columns, so the one-hot is never built: an embedding lookup
        with the same weight gives the same numbers (tested).
        """
        table = self.decoder.codebook.weight[:, :, 0, 0].t()  # (K, D)
        x = F.embedding(codes, table).permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)
        mu = self.decoder.decode_embedded(x)[:, : self.config.channels]  # (B, C, H, W)
        return unmap_pixels(torch.sigmoid(mu), self.config.eps)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)): the round trip a generated image goes through."""
        return self.decode(self.encode(images))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------
# dead-code restarts (not in the paper)
# ---------------------------------------------------------------------------


@torch.no_grad()
def restart_dead_codes(
    model: DVAE, dead: torch.Tensor, logits: torch.Tensor, cell_error: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
) -> int:
    """Give each unused code a second life as a near copy of a busy code, where reconstruction is worst.

    A code the encoder never picks gets almost no gradient (its softmax
    probability is tiny), so once the encoder settles on a few codes the rest
    stay dead. For each dead code k: draw a cell of the batch with probability
    proportional to its reconstruction error ``cell_error`` (B, h, w), take the
    code j that cell uses now, and set code k's row of the logits conv and its
    column of the codebook to j's plus 1% noise (their Adam moments to zero).
    k and j now tie wherever j wins; training splits the cells between them,
    which is how k-means grows clusters (LBG splitting). Returns the number of
    codes restarted. ``dead``: bool (K,).
    """
    dead_ids = dead.nonzero().flatten()
    if len(dead_ids) == 0:
        return 0
    weights = cell_error.flatten().float().clamp_min(0) + 1e-12  # (B·h·w,)
    cells = torch.multinomial(weights.cpu(), len(dead_ids), replacement=True, generator=generator)
    busy = logits.argmax(dim=1).flatten().cpu()[cells]  # (n_dead,): the code each chosen cell uses now
    head = model.encoder.to_logits[-1]  # Conv2d(N, K, 1): row k scores code k
    book = model.decoder.codebook  # Conv2d(K, D, 1): column k is code k's vector
    k, j = dead_ids.to(head.weight.device), busy.to(head.weight.device)
    head.weight[k] = head.weight[j] * (1 + 0.01 * torch.randn_like(head.weight[j]))
    book.weight[:, k] = book.weight[:, j] * (1 + 0.01 * torch.randn_like(book.weight[:, j]))
    if head.bias is not None:
        head.bias[k] = head.bias[j]
    if optimizer is not None:
        for p, index, dim in ((head.weight, k, 0), (book.weight, k, 1)) + (((head.bias, k, 0),) if head.bias is not None else ()):
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in optimizer.state.get(p, {}):
                    optimizer.state[p][moment].index_fill_(dim, index, 0.0)
    return len(dead_ids)


@torch.no_grad()
def calibrate_logits_norm(model: DVAE, images: torch.Tensor, batch_size: int = 128) -> float:
    """Set the logits head's running statistics to their exact values over ``images``; return the mean's largest change.

    In training, ``Centre`` and the BatchNorm subtract the batch's own mean; in
    eval mode (``encode``) a running mean, an average of recent batches taken
    while the weights kept moving. Argmax codes are sensitive to it: measured
    at one checkpoint of a 16×16 run at full learning rate, a running mean off
    by about 1% of its norm changed 27% of the codes, and the round trips
    graded 11% in eval mode against 93% with the batch's statistics. Here the
    encoder reads ``images`` (B, C, H, W) in [0, 1] with the current weights,
    and the running mean (and the BatchNorm's running variance) become those
    of every cell of every image. Training mode never reads them, so calling
    this between steps leaves the training itself unchanged. 0.0 for "none".
    """
    norm = model.encoder.to_logits[1]
    if not isinstance(norm, (Centre, nn.BatchNorm2d)):
        return 0.0
    device = next(model.parameters()).device
    total = torch.zeros_like(norm.running_mean, dtype=torch.float64)  # (N,): Σ of each feature over all cells
    total_sq = torch.zeros_like(total)
    count = 0

    def collect(module, inputs):  # the features entering the norm, (B, N, h, w)
        nonlocal count
        f = inputs[0].double()
        total.add_(f.sum(dim=(0, 2, 3)))
        total_sq.add_((f * f).sum(dim=(0, 2, 3)))
        count += f.numel() // f.size(1)

    was_training = model.training
    model.eval()
    hook = norm.register_forward_pre_hook(collect)
    try:
        for i in range(0, len(images), batch_size):
            model.encoder(map_pixels(images[i:i + batch_size].to(device).float(), model.config.eps))
    finally:
        hook.remove()
        model.train(was_training)
    mean = total / count
    change = (mean - norm.running_mean).abs().max().item()
    norm.running_mean.copy_(mean)
    if isinstance(norm, nn.BatchNorm2d):  # stored unbiased, as a BatchNorm stores it
        norm.running_var.copy_((total_sq / count - mean**2) * count / max(count - 1, 1))
    return change


# ---------------------------------------------------------------------------
# codebook health
# ---------------------------------------------------------------------------


def code_histogram(codes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each code is used: counts, shape (K,). Example: [[0, 2, 2]], K=4 -> [1, 0, 2, 0]."""
    return torch.bincount(codes.flatten().long(), minlength=vocab_size)


def histogram_perplexity(histogram) -> float:
    """exp(entropy) of code counts (K,): the number of codes "effectively" in use.

    p_k = count_k / Σ counts,  perplexity = exp(-Σ_k p_k ln p_k), between 1
    (one code everywhere) and K (all codes equally often). Example: [4, 4, 0, 0] -> 2.0.
    """
    p = torch.as_tensor(histogram).double()
    p = p / p.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())


def codebook_perplexity(codes: torch.Tensor, vocab_size: int) -> float:
    """exp(entropy) of the code usage of ``codes``: ``histogram_perplexity`` of their ``code_histogram``."""
    return histogram_perplexity(code_histogram(codes, vocab_size))


def dead_codes(codes: torch.Tensor, vocab_size: int) -> int:
    """Number of codes never chosen on these codes (a large count means wasted codebook)."""
    return int((code_histogram(codes, vocab_size) == 0).sum())


def code_locations(codes, code: int) -> np.ndarray:
    """Where ``code`` occurs in a stack of code grids (N, h, w): an array of ``(image, row, col)`` rows.

    Example: codes [[[1, 2], [2, 3]]], code 2 -> [[0, 0, 1], [0, 1, 0]].
    """
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    return np.argwhere(codes == code)


def most_colourful_code(image, grid) -> int:
    """The code of ``grid`` (h, w) whose cells hold the most colour (distance from white) in ``image``.

    A sensible first code to look at: on Shapes, the most frequent code of an
    image is usually plain background. Example: a white image with one red cell
    -> the code of that cell.
    """
    img = to_uint8_images(image).astype(np.float64)  # (H, W, 3)
    grid = np.asarray(grid.cpu() if hasattr(grid, "cpu") else grid)  # (h, w)
    h, w = grid.shape
    ink = (255.0 - img).sum(axis=-1)  # (H, W): 0 on white
    per_cell = ink.reshape(h, img.shape[0] // h, w, img.shape[1] // w).sum(axis=(1, 3))  # (h, w)
    totals: dict[int, float] = {}  # code -> colour in its cells
    for code, amount in zip(grid.flat, per_cell.flat):
        totals[int(code)] = totals.get(int(code), 0.0) + float(amount)
    return max(totals, key=lambda c: (totals[c], -c))


@torch.no_grad()
def codebook_stats(model: DVAE, images: torch.Tensor, batch_size: int = 256) -> dict:
    """Perplexity, dead codes and histogram of the argmax codes of ``images`` (B, C, H, W)."""
    device = next(model.parameters()).device
    codes = torch.cat([model.encode(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    K = model.config.vocab_size
    return {
        "perplexity": codebook_perplexity(codes, K),
        "dead_codes": dead_codes(codes, K),
        "histogram": code_histogram(codes, K),
    }


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]: 10 · log10(1 / MSE), in dB."""
    mse = F.mse_loss(x.float(), y.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


# ---------------------------------------------------------------------------
# a trained dVAE
# ---------------------------------------------------------------------------

MODEL_TYPE = "dvae"


def load(model_dir=None, device: str | None = None) -> DVAE:
    """The dVAE in ``model_dir`` (default: the shipped ``data/dvae``), in eval mode."""
    model_dir = model_dir if model_dir is not None else DATA_DIR / "dvae"
    return checkpoints.load_model(model_dir, DVAE, DVAEConfig, MODEL_TYPE, device=device or get_device())


@torch.no_grad()
def reconstruct_batched(model: DVAE, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Argmax round trip of (N, C, H, W) images in [0, 1], in batches; returns float (N, C, H, W) on the CPU."""
    device = next(model.parameters()).device
    out = [model.reconstruct(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)
