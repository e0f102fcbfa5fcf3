"""Time to quality: train-all from scratch on Shapes, and how well the pipeline draws as training goes on.

Trains the four models of ``dalle-mini-impl train-all --preset cpu`` from
nothing, in a fresh run folder whose code cache lives inside it (nothing is
reused from earlier runs), and prints:

* the wall time of every stage (tokenizer, dVAE, CLIP, transformer);
* a curve: every ``--eval-every-minutes`` of transformer training, the graded
  fidelity of the whole pipeline on both splits — for each of ``--prompts``
  captions, N = ``--candidates`` samples reranked by the run's own CLIP, and
  whether the top-1 shows the caption (``evaluate.evaluate_splits``, the
  measurement of ``dalle-mini-impl evaluate``), against the training time
  spent so far (all stages; evaluation time is not counted);
* the first time the seen split's CLIP top-1 reaches 90 % (the goal), and
  where the curve stands at 30 minutes.

Order. train-all trains CLIP last; here CLIP trains before the transformer, so
that every point of the curve is measured with the final reranker. The models
are the same either way: CLIP needs only the tokenizer, and every loop seeds
its own random generators when it starts. The transformer trains in chunks
(``until=``, then resumed) of about ``--eval-every-minutes``; its learning-rate
schedule always spans the plan's full ``transformer_steps``, so a curve cut by
``--budget-minutes`` is not a shorter plan run to its end.

Usage::

    python bench/bench_time_to_quality.py                          # the cpu plan, hours on a 2-core CPU
    python bench/bench_time_to_quality.py --set dvae_steps=2000 --set transformer_steps=2000
    python bench/bench_time_to_quality.py --quick                  # tiny models: checks the script in ~1 minute
    python bench/bench_time_to_quality.py --out r.json --plot r.png   # also keep the figures and draw the curve
    python bench/bench_time_to_quality.py --from-json r.json --plot r.png   # reprint and redraw a finished run

``--quick`` trains tiny models for a few dozen steps: its numbers mean
nothing, it only shows that every part runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dalle_mini_impl import train_all as ta  # noqa: E402
from dalle_mini_impl.train_all import RunPlan  # noqa: E402

GOAL = 0.90  # seen-split CLIP top-1
MARK_MINUTES = 30.0
STAGES = ("tokenizer", "dvae", "clip", "transformer")  # in the order they train here

# tiny models and runs: the whole script in about a minute (the figures mean nothing)
QUICK_PLAN = RunPlan(
    tokenizer_captions=2000, dvae_steps=30, dvae_batch_size=16, dvae_images=2000, transformer_steps=60,
    transformer_batch_size=16, transformer_images=2000, clip_steps=30, clip_batch_size=16, checkpoint_every=20,
    sample_every=10_000, eval_prompts=0,
    dvae_config=dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=64),
    transformer_config=dict(d_model=32, n_heads=4, n_layers=4),
    clip_config=dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(ta.PLANS), default="cpu", help="the train-all plan (default: cpu)")
    p.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                   help="change one number of the plan, e.g. --set dvae_steps=2000 (repeatable)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop the transformer once this much training time has passed (default: its whole plan)")
    p.add_argument("--eval-every-minutes", type=float, default=None,
                   help="transformer training between two points of the curve (default: 5; --quick: 0.1)")
    p.add_argument("--prompts", type=int, default=None,
                   help="captions per split at each point (default: 100; --quick: 8)")
    p.add_argument("--candidates", type=int, default=16, help="N samples per caption, reranked by CLIP (default: 16)")
    p.add_argument("--out", type=Path, default=None, help="also write the stage times and the curve to this JSON file")
    p.add_argument("--plot", type=Path, default=None, help="also draw the curve to this image file (PNG, SVG, PDF)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="train nothing: reprint the summary of a finished run's --out file (and draw it with --plot)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="the run folder, which must not exist yet (default: runs/time_to_quality_<date>_<time>)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default: 1, as train-all; 2 can be faster on an idle 2-core machine)")
    p.add_argument("--quick", action="store_true", help="tiny models and runs: a smoke test of the script")
    args = p.parse_args(argv)
    if args.eval_every_minutes is None:
        args.eval_every_minutes = 0.1 if args.quick else 5.0
    if args.prompts is None:
        args.prompts = 8 if args.quick else 100
    if args.prompts < 1 or args.candidates < 1 or args.eval_every_minutes <= 0 or args.threads < 1:
        p.error("--prompts, --candidates, --threads and --eval-every-minutes must be positive")
    return args


def make_plan(args: argparse.Namespace) -> RunPlan:
    plan = QUICK_PLAN if args.quick else ta.PLANS[args.preset]
    numbers = {f.name: type(f.default) for f in dataclasses.fields(RunPlan) if isinstance(f.default, (int, float))}
    changes = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        if key not in numbers:
            raise SystemExit(f"--set {pair!r}: FIELD must be one of {sorted(numbers)}")
        changes[key] = numbers[key](value)
    return dataclasses.replace(plan, **changes)


def evaluate_point(models, args) -> dict:
    """CLIP top-1 (and the random-sample rate) on the seen and compositional splits."""
    from dalle_mini_impl.evaluate import evaluate_splits

    t0 = time.perf_counter()
    reports = evaluate_splits(models, ("seen", "compositional"), n_prompts=args.prompts, candidates=args.candidates,
                              keep=min(4, args.candidates), seed=0, progress=False)
    point = {f"{split}_{row}": reports[split]["overall"][row] for split in reports for row in ("top1", "random")}
    return {**point, "eval_seconds": round(time.perf_counter() - t0, 1)}


def summarise(result: dict) -> dict:
    """Print the stage times, the goal and the 30-minute mark of a run; return the last two for its JSON."""
    stages, curve, steps = result["stage_seconds"], result["curve"], result["plan"]["transformer_steps"]
    clock = sum(stages.values())
    print("\nwall time per stage (training only):")
    for name in STAGES:
        print(f"  {name:<12} {stages.get(name, 0.0):8.0f} s  ({stages.get(name, 0.0) / 60:.1f} min)")
    print(f"  {'total':<12} {clock:8.0f} s  ({clock / 60:.1f} min); evaluation "
          f"{sum(p['eval_seconds'] for p in curve):.0f} s more")
    reached = next((p for p in curve if p["seen_top1"] >= GOAL), None)
    goal = (f"reached at {reached['minutes']:.1f} min of training (transformer step {reached['step']}/{steps})"
            if reached else f"not reached (best {max((p['seen_top1'] for p in curve), default=0):.1%})")
    print(f"goal, seen-split CLIP top-1 >= {GOAL:.0%}: {goal}")
    before = [p for p in curve if p["minutes"] <= MARK_MINUTES]
    if before:
        p = before[-1]
        mark = (f"at {p['minutes']:.1f} min (step {p['step']}/{steps}): seen top-1 {p['seen_top1']:.1%}, "
                f"compositional top-1 {p['compositional_top1']:.1%}")
    else:
        spent, where = 0.0, "the transformer"
        for name in STAGES[:-1]:
            spent += stages.get(name, 0.0)
            if spent > MARK_MINUTES * 60:
                where = name
                break
        mark = f"no point yet: at {MARK_MINUTES:.0f} min the {where} stage was still training"
    print(f"at {MARK_MINUTES:.0f} minutes: {mark}")
    return {"goal": {"seen_top1": GOAL, "reached": reached}, f"at_{MARK_MINUTES:.0f}_minutes": mark}


def plot_curve(result: dict, path: Path) -> None:
    """Draw CLIP top-1 (and a random sample) on both splits against training minutes, the stages shaded behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, stages = result["curve"], result["stage_seconds"]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    start, total = 0.0, sum(stages.values()) / 60
    shades = {"tokenizer": "#eeeeee", "dvae": "#e3ecf7", "clip": "#f7eadb", "transformer": "#e6f4e1"}
    for name in STAGES:
        width = stages.get(name, 0.0) / 60
        if name == "transformer":  # nothing can be drawn before it trains: 0 % where its stage starts
            minutes = [start] + [p["minutes"] for p in curve]
        ax.axvspan(start, start + width, color=shades[name], zorder=0)
        if width > 0.04 * total:
            ax.text(start + width / 2, 0.03, name, ha="center", va="bottom", fontsize=9, color="#555555")
        start += width
    for split, colour in (("seen", "C0"), ("compositional", "C1")):
        ax.plot(minutes, [0.0] + [p[f"{split}_top1"] for p in curve], "o-", color=colour, ms=4,
                label=f"{split}: CLIP top-1 of {result['candidates']}")
        ax.plot(minutes, [0.0] + [p[f"{split}_random"] for p in curve], "--", color=colour, alpha=0.6,
                label=f"{split}: a random sample")
    ax.axhline(GOAL, color="k", lw=0.8, ls=":")
    ax.text(0.005, GOAL + 0.01, f"goal: seen top-1 {GOAL:.0%}", fontsize=8, va="bottom",
            transform=ax.get_yaxis_transform())  # x in axes fractions, y in data
    if MARK_MINUTES < start:
        ax.axvline(MARK_MINUTES, color="k", lw=0.8, ls=":")
        ax.text(MARK_MINUTES, 0.99, f" {MARK_MINUTES:.0f} min", fontsize=8, va="top")
    ax.set(xlabel="training time, minutes (all stages; evaluation not counted)",
           ylabel=f"captions drawn right ({result['prompts']} per split)", ylim=(0, 1.02), xlim=(0, start * 1.01))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    plan = result["plan"]
    title = f"train-all --preset {plan['preset']} from scratch"
    if result.get("quick"):
        title += " (--quick: tiny models)"
    else:  # name every number changed with --set
        base = dataclasses.asdict(ta.PLANS[plan["preset"]])
        changed = [f"{k}={v}" for k, v in plan.items() if k in base and v != base[k]]
        if changed:
            title += "\n" + textwrap.fill("--set " + ", ".join(changed), 90)
    threads = f"{result['threads']} thread" + ("s" if result["threads"] > 1 else "")
    ax.set_title(f"{title}; {threads}, {result['device']}", fontsize=10)
    ax.legend(loc="center left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def finish(result: dict, out: Path | None, plot: Path | None) -> dict:
    """Print the summary of a run (trained now or read back), and write its JSON and its plot if asked."""
    result.update(summarise(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    if plot is not None:
        plot_curve(result, plot)
        print(f"drew {plot}")
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json is not None:
        return finish(json.loads(args.from_json.read_text()), None, args.plot)
    import torch

    from dalle_mini_impl.pipeline import Models
    from dalle_mini_impl.dvae import load as load_dvae
    from dalle_mini_impl.clip import load as load_clip
    from dalle_mini_impl.bpe import load_tokenizer
    from dalle_mini_impl.train_transformer import cache_codes

    plan = make_plan(args)
    run_dir = args.run_dir or REPO / "runs" / time.strftime("time_to_quality_%Y%m%d_%H%M%S")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} is not empty: the benchmark trains from scratch; give another --run-dir")
    if args.quick:
        print("--quick: tiny models and runs; the figures below only show that every part runs")
    run = ta.open_run(run_dir, None, plan, threads=args.threads, cache_dir=run_dir / "cache", progress=False,
                      log=lambda s: print("  " + s, flush=True))
    print(f"run folder {run_dir} | device {run.device} | {args.threads} threads | torch {torch.__version__}")

    stages, clock = {}, 0.0  # seconds per stage; training time so far

    def timed(name: str, work):
        nonlocal clock
        t0 = time.perf_counter()
        result = work()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        clock += time.perf_counter() - t0
        return result

    for name, stage in (("tokenizer", ta.train_tokenizer_stage), ("dvae", ta.train_dvae_stage),
                        ("clip", ta.train_clip_stage)):
        print(f"{name} ...", flush=True)
        timed(name, lambda stage=stage: stage(run))
        print(f"{name}: {stages[name]:.0f} s", flush=True)
    tokenizer, dvae = load_tokenizer(run.tokenizer_path), load_dvae(run.dir("dvae"), device=run.device)
    clip = load_clip(run.dir("clip"), device=run.device)
    print("transformer: encoding the training images to codes, once ...", flush=True)
    timed("transformer", lambda: cache_codes(dvae, "train", plan.transformer_images, plan.seed, run.cache_dir,
                                             progress=False))

    quiet = dataclasses.replace(run, log=lambda _: None)  # the chunks' own messages would break up the table
    curve, step, rate = [], 0, None  # rate: seconds per transformer step, measured on the last chunk
    steps, every = plan.transformer_steps, args.eval_every_minutes * 60
    budget = args.budget_minutes * 60 if args.budget_minutes is not None else float("inf")
    header = (f"{'training min':>12}  {'step':>11}  {'seen top-1':>10}  {'comp. top-1':>11}  {'seen random':>11}  "
              f"{'comp. random':>12}  {'eval s':>6}")
    print(f"\ntransformer, evaluated every {args.eval_every_minutes:g} min of training "
          f"({args.prompts} captions per split, N = {args.candidates}, CLIP top-1):\n{header}", flush=True)
    while step < steps and clock < budget:
        chunk = 20 if rate is None else max(1, int(min(every, budget - clock) / rate))
        target = min(steps, step + chunk)
        t0 = time.perf_counter()
        model = timed("transformer", lambda target=target: ta.train_transformer_stage(quiet, until=target))
        rate, step = (time.perf_counter() - t0) / (target - step), target
        point = {"minutes": round(clock / 60, 2), "step": step,
                 **evaluate_point(Models(tokenizer, dvae, model.float(), clip), args)}
        curve.append(point)
        print(f"{point['minutes']:>12.1f}  {f'{step}/{steps}':>11}  {point['seen_top1']:>10.1%}  "
              f"{point['compositional_top1']:>11.1%}  {point['seen_random']:>11.1%}  "
              f"{point['compositional_random']:>12.1%}  {point['eval_seconds']:>6.0f}", flush=True)

    result = {"plan": dataclasses.asdict(plan), "quick": args.quick, "threads": args.threads, "device": run.device,
              "prompts": args.prompts, "candidates": args.candidates,
              "stage_seconds": {k: round(v, 1) for k, v in stages.items()}, "curve": curve}
    return finish(result, args.out, args.plot)


if __name__ == "__main__":
    main()
