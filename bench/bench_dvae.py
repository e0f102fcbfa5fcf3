"""Benchmark the dVAE: quality of the shipped model and speed of a training step.

Quality: argmax reconstructions of held-out Shapes images (the ``test`` and
``compositional`` splits, one- and two-object scenes) graded against their
captions by ``grader.grade``, side by side with the originals graded the same
way (the ceiling), plus PSNR, codebook perplexity and dead codes; then a table
of one-object round trips for every size, shape and colour, which shows what
the codebook cannot draw (a held-out colour–shape pair at the small size).

Speed: training steps per second of the cpu preset in fp32 (the baseline) and
with bf16 autocast + channels-last, and encode/decode throughput.

    .venv/bin/python bench/bench_dvae.py [--model DIR] [--n 500] [--per-object 40] [--skip-speed] [--threads 2]
                                         [--grid PNG]

``--grid`` also saves a picture to check by eye: originals of both splits above
their round trips, each round trip with a green (match) or red (no match) bar.
"""

from __future__ import annotations

import argparse
import time

import torch

from dalle_mini_impl import DATA_DIR, grader, shapes
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.dvae import load as load_dvae
from dalle_mini_impl.dvae import reconstruct_batched
from dalle_mini_impl.evaluate import caption_round_trip_rate, evaluate_reconstructions
from dalle_mini_impl.evaluate import format_reconstruction_report as format_report
from dalle_mini_impl.images import to_float_images, to_uint8_images
from dalle_mini_impl.train_common import cpu_has_bf16, setup_cpu


def originals_rate(n: int, seed: int) -> float:
    """How often the grader reads the caption off the original image (the ceiling for reconstructions)."""
    ok = total = 0
    for split in ("test", "compositional"):
        scenes = shapes.make_scenes(split, n, seed)
        for scene, image in zip(scenes, shapes.render_batch(scenes)):
            ok += bool(grader.grade(image, scene.caption).match)
            total += 1
    return ok / total


def save_grid(model, path: str, n: int = 12, seed: int = 0) -> None:
    """Originals (top) and their argmax round trips (bottom, a green or red bar: graded match or not), 3x size."""
    import numpy as np
    from PIL import Image


    rows = []
    for split in ("test", "compositional"):
        scenes = shapes.make_scenes(split, n, seed)
        originals = shapes.render_batch(scenes)
        rec = to_uint8_images(reconstruct_batched(model, to_float_images(originals)))
        marked = []
        for scene, image in zip(scenes, rec):
            bar = np.full((4, 64, 3), (30, 160, 70) if grader.grade(image, scene.caption).match else (220, 38, 38), np.uint8)
            marked.append(np.concatenate([image, bar]))
        pad = np.full((68 - 64, 64, 3), 255, np.uint8)
        rows += [np.concatenate([np.concatenate([o, pad]) for o in originals], 1), np.concatenate(marked, 1)]
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1])
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    print(f"grid of originals and round trips -> {path}")


def train_step_time(precision: str, steps: int = 5, batch_size: int = 64) -> float:
    torch.manual_seed(0)
    model = DVAE(DVAEConfig.preset("cpu")).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = to_float_images(shapes.ShapesDataset("train", size=batch_size, seed=0).images).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, tau=0.5, kl_weight=6.6)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DATA_DIR / "dvae"))
    parser.add_argument("--n", type=int, default=500, help="images per split (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-object", type=int, default=40, help="images per colour, shape and size in the table")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (1 is faster on a busy 2-core machine)")
    parser.add_argument("--grid", help="also save originals above their round trips to this PNG")
    args = parser.parse_args()
    setup_cpu(args.threads)

    model = load_dvae(args.model, device="cpu")
    print(f"dVAE {args.model}: {model.num_params() / 1e6:.2f} M parameters, K={model.config.vocab_size}, "
          f"grid {model.config.grid_size}x{model.config.grid_size}")
    t = time.perf_counter()
    report = evaluate_reconstructions(model, n_per_split=args.n, seed=args.seed)
    print(format_report(report))
    print(f"originals graded the same way: {originals_rate(args.n, args.seed):.1%} (the ceiling) "
          f"| evaluation took {time.perf_counter() - t:.0f} s")
    if args.grid:
        save_grid(model, args.grid, seed=args.seed)

    print(f"\nround trips of one object by colour ({args.per_object} images each; "
          f"* = a pair held out of training, the compositional split):")
    held_out = set(shapes.pairs_for_split("compositional"))
    print(f"{'':<16}" + "".join(f"{c:>9}" for c in shapes.COLORS))
    for size in ("small", "large"):
        for shape in shapes.SHAPES:
            rates = [caption_round_trip_rate(model, f"a {size} {c} {shape}", args.per_object, args.seed) for c in shapes.COLORS]
            marks = ["*" if (c, shape) in held_out else " " for c in shapes.COLORS]
            print(f"{size + ' ' + shape:<16}" + "".join(f"{r:>8.0%}{m}" for r, m in zip(rates, marks)))

    if args.skip_speed:
        return
    x = to_float_images(shapes.ShapesDataset("val", size=256, seed=0).images)
    t = time.perf_counter()
    codes = model.encode(x)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    model.decode(codes)
    t_dec = time.perf_counter() - t
    print(f"inference (fp32, {args.threads} thread(s)): encode {256 / t_enc:.0f} img/s, decode {256 / t_dec:.0f} img/s")
    fp32 = train_step_time("fp32")
    line = f"training step, cpu preset, batch 64: fp32 {fp32 * 1000:.0f} ms (baseline)"
    if cpu_has_bf16():
        bf16 = train_step_time("bf16")
        line += f" | bf16 autocast {bf16 * 1000:.0f} ms ({fp32 / bf16:.2f}x)"
    else:
        line += " | bf16: this CPU has no native bf16, not measured"
    print(line)


if __name__ == "__main__":
    main()
