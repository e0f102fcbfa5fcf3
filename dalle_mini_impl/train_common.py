"""What the three training loops share, written once: read it first, then any loop reads in minutes.

Each loop (``train_dvae``, ``train_transformer``, ``train_clip``) has the same
shape::

    run = train_common.setup(out_dir, device, precision, threads, seed, log, progress)
    model, optimizer = ..., torch.optim.AdamW(train_common.decay_groups(model, wd), ...)
    step = checkpoints.start_or_resume(run.state_path, model, optimizer, config, run_info, resume, run.log)
    metrics = train_common.MetricsLog(run.out_dir / "metrics.jsonl", step)   # trimmed to the resumed step
    for step in run.progress(range(step, last), step, steps):
        lr = train_common.lr_at(step, steps, peak, warmup_frac, end_frac)     # 1. schedules
        ...                                                                   # 2. a batch
        with run.autocast: loss = ...                                         # 3. forward
        train_common.check_finite(loss, step, run.state_path)                 #    (before any update)
        optimizer.zero_grad(); loss.backward(); optimizer.step()              #    backward, step
        ...                                                                   # 4. report, save

What lives here: ``setup`` (device, DDP, precision, CPU threads, the seed),
one warm-up + cosine learning-rate schedule, one weight-decay grouping, the
finite-loss guard, an append-only metrics log that a resumed run trims to its
step, and the progress bar. Saving and resuming a run is ``checkpoints``'.

Does not handle: gradient accumulation, learning-rate schedulers as objects
(a function of the step is easier to read, plot and resume).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoints, distributed, seed_everything


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


# ---------------------------------------------------------------------------
# the machine: threads, precision
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


def resolve_precision(precision: str, device: str, cpu_bf16: bool = True) -> str:
    """``"auto"`` -> ``"bf16"`` on a GPU or a CPU with native bf16, else ``"fp32"``.

    ``cpu_bf16=False``: ``"auto"`` is fp32 on every CPU, for a model whose
    steps bf16 does not speed up there (CLIP's small matrices).
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if gpu_has_bf16() else "fp32"
    return "bf16" if cpu_bf16 and cpu_has_bf16() else "fp32"


def gpu_has_bf16() -> bool:
    """True when this GPU runs bf16 natively (compute capability 8.0 or newer: A100, L4, H100, RTX 30xx…).

    A T4 (7.5, Colab's free GPU) reports bf16 as "supported" through emulation,
    which is slower than fp32 there: it gets fp32.
    """
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def autocast(device: str, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision`` is ``"bf16"``, a no-op context otherwise."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class Run:
    """Where and how a training loop runs, as ``setup`` settled it."""

    device: str
    precision: str  # "bf16" or "fp32", resolved
    main: bool  # rank 0 (the only process outside torchrun): it alone saves, logs and shows progress
    out_dir: Path
    log: Callable[[str], None]  # print on rank 0, silent elsewhere
    show_progress: bool

    @property
    def state_path(self) -> Path:
        return self.out_dir / checkpoints.STATE_NAME

    @property
    def autocast(self) -> torch.autocast:
        return autocast(self.device, self.precision)

    def compile(self, module: Callable) -> Callable:
        """``torch.compile`` on a GPU; on a CPU the module itself (compiling costs more than it saves there)."""
        return torch.compile(module) if self.device.startswith("cuda") else module

    def progress(self, steps: Iterable[int], initial: int, total: int, desc: str):
        """A tqdm bar over ``steps`` (resuming at ``initial``), or a silent stand-in with the same methods."""
        return progress(steps, initial, total, enabled=self.show_progress, desc=desc)


def setup(out_dir: str | Path, batch_size: int, seed: int, device: str | None = None, precision: str = "auto",
          threads: int | None = 2, log: Callable[[str], None] = print, show_progress: bool = True,
          cpu_bf16: bool = True) -> Run:
    """Everything a loop does before building its model, in one call.

    Joins the other processes when launched by torchrun, checks that they can
    share ``batch_size``, resolves ``precision`` (``"auto"``: bf16 where it is
    native, see ``resolve_precision``), sets the CPU threads, and seeds every generator with ``seed`` —
    the same seed on every rank, so all ranks draw the same global batches.
    """
    device = distributed.setup(device)
    main = distributed.is_main()
    distributed.per_rank_batch(batch_size)  # fails early when the processes cannot share the batch
    precision = resolve_precision(precision, device, cpu_bf16)
    if device == "cpu":
        setup_cpu(threads)
    seed_everything(seed)
    return Run(device=device, precision=precision, main=main, out_dir=Path(out_dir),
               log=log if main else (lambda _: None), show_progress=show_progress and main)


# ---------------------------------------------------------------------------
# the learning rate and the optimizer
# ---------------------------------------------------------------------------


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at step ``total``, then constant ``end``.

    value = end + (start - end) · (1 + cos(π · min(step / total, 1))) / 2
    Example: start=1, end=0, total=10: step 0 -> 1.0, step 5 -> 0.5, step 10 -> 0.0.
    """
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, steps: int, peak: float, warmup_frac: float = 0.05, end_frac: float = 0.1) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then a cosine from ``peak`` down to ``peak · end_frac``.

    lr(s) = peak · (s + 1) / W                                         for s < W
    lr(s) = end + (peak - end) · (1 + cos(π (s - W) / (S - W))) / 2     after
    Example (peak 1e-3, S = 100, W = 5): step 0 -> 2e-4, step 4 -> 1e-3, step 100 -> 1e-4.
    Warm-up: Adam's second-moment estimates are noise for the first steps, so
    full-size steps then can throw the weights far; the cosine's slow end lets
    the weights settle.
    """
    warmup = max(1, round(warmup_frac * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, steps - warmup, peak, peak * end_frac)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's lr to ``lr`` times the group's ``lr_mult`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def decay_groups(model: torch.nn.Module, weight_decay: float, no_decay: Iterable[torch.nn.Parameter] = ()) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices, kernels and embeddings (dim >= 2) only, as in GPT-2.

    Biases and norm gains (dim < 2) get none: shrinking them towards 0 only
    fights the normalisation. ``no_decay``: more parameters that get none
    (e.g. CLIP's [CLS] vector).
    """
    exempt = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in exempt]
    rest = [p for p in model.parameters() if p.dim() < 2 or id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------
# during the loop: the guard, the log, the bar
# ---------------------------------------------------------------------------


def check_finite(loss: torch.Tensor, step: int, state_path: Path) -> None:
    """Raise ``TrainingDiverged`` when ``loss`` (on any rank) is NaN or infinite: call it before the update.

    Stopping before ``optimizer.step()`` keeps the weights of the last
    checkpoint on disk good; the message names it and its step.
    """
    if not distributed.all_finite(loss):
        saved = checkpoints.saved_step(state_path)
        raise TrainingDiverged(
            f"loss is {loss.item()} at step {step}; stopped before updating the weights. "
            f"The last good checkpoint is {state_path} (step {'none yet' if saved is None else saved}); "
            "lower the learning rate or use precision='fp32', then resume."
        )


class MetricsLog:
    """An append-only JSON-lines log of a run (one ``{"step": ..., ...}`` object per line).

    Opening it at ``step`` (the step a run starts or resumes from) drops every
    row logged after that step, and a torn last line: a run killed after
    logging step 6 but before its step-6 checkpoint logs step 6 again when
    resumed from step 4, and must not log it twice.
    """

    def __init__(self, path: str | Path, step: int, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            checkpoints.trim_log(self.path, step)

    def append(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def progress(iterable: Iterable, initial: int, total: int, enabled: bool = True, desc: str = ""):
    """A tqdm bar over ``iterable`` (resuming at ``initial``), or a silent stand-in with the same methods."""
    if not enabled:
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, initial=initial, total=total, desc=desc, mininterval=5.0)


class _Quiet:
    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, *_, **__) -> None:
        pass

    def close(self) -> None:
        pass
