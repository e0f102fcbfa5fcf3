"""Why the attention op runs in fp32 under bf16 autocast on a CPU: timed, in one run.

Two measurements, each beside its baseline:

1. the masked attention op alone, forward + backward, at the course's training
   size (B 64, 8 heads, 95 positions, head size 32, the row mask):
     * fp32                       ``scaled_dot_product_attention`` on fp32 tensors
     * bf16                       the same op on bf16 tensors (what autocast would run)
     * bf16 in, fp32 op           ``attention._dense_attention``: upcast, attend, cast back
2. whole training steps of the ``cpu`` preset transformer (batch 64, AdamW,
   clipping, as ``train_transformer`` runs them), in steps per second:
     * fp32
     * bf16 autocast with the attention op in bf16 (the plain way)
     * bf16 autocast with the attention op in fp32 (the course's way)

On a CPU without native bf16 the bf16 rows are slow and ``precision="auto"``
trains in fp32 anyway; the figures say which case this machine is.

    python bench/bench_attention.py [--threads 2] [--steps 15]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import dalle_mini_impl.attention as attention
from dalle_mini_impl.attention import build_mask
from dalle_mini_impl.train_common import cpu_has_bf16, setup_cpu
from dalle_mini_impl.train_transformer import measure_steps_per_second
from dalle_mini_impl.transformer import TransformerConfig

B, NH, T, HS = 64, 8, 95, 32


def time_op(fn, dtype: torch.dtype, repeats: int) -> float:
    """Best seconds of one forward + backward of ``fn(q, k, v)`` on tensors of ``dtype``."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, NH, T, HS, dtype=dtype, requires_grad=True) for _ in range(3))
    best = float("inf")
    for i in range(repeats + 2):  # two warm-up runs
        t0 = time.perf_counter()
        fn(q, k, v).float().sum().backward()
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per setting")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of the op (the best counts)")
    args = parser.parse_args()
    setup_cpu(args.threads)
    print(f"CPU with native bf16: {cpu_has_bf16()}; {args.threads} thread(s)")

    mask = build_mask("row", 32, 8, kernel=5)[:T, :T]  # 32 text + 64 codes, less the last code (never an input)

    def plain(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def course(q, k, v):
        return attention._dense_attention(q, k, v, mask)

    ops = [("fp32", plain, torch.float32), ("bf16", plain, torch.bfloat16), ("bf16 in, fp32 op", course, torch.bfloat16)]
    print(f"\n1. attention op, forward + backward, B {B}, {NH} heads, T {T}, head size {HS}")
    print(f"{'setting':<20}{'ms':>9}{'time / fp32':>14}")
    base = None
    for name, fn, dtype in ops:
        seconds = time_op(fn, dtype, args.repeats)
        base = base or seconds
        print(f"{name:<20}{seconds * 1e3:>9.1f}{seconds / base:>14.2f}")

    config = TransformerConfig.preset("cpu", text_vocab_size=356, image_vocab_size=512)
    upcast = attention._dense_attention

    def bf16_everywhere(q, k, v, allowed):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    settings = [("fp32", "fp32", upcast), ("bf16, attention op bf16", "bf16", bf16_everywhere),
                ("bf16, attention op fp32", "bf16", upcast)]
    print("\n2. training steps of the cpu preset transformer, batch 64")
    print(f"{'setting':<26}{'steps/s':>9}{'speed / fp32':>15}")
    base = None
    for name, precision, op in settings:
        attention._dense_attention = op
        try:
            rate = measure_steps_per_second(config, 64, steps=args.steps, precision=precision, threads=args.threads)
        finally:
            attention._dense_attention = upcast
        base = base or rate
        print(f"{name:<26}{rate:>9.2f}{rate / base:>15.2f}")


if __name__ == "__main__":
    main()
