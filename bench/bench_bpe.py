"""Benchmark: BPE training and encoding speed, ours vs the naive trainer vs Hugging Face tokenizers.

Training text: tests/fixtures/python_docs_english.txt (about 1.25 MB of English
from the Python docs), one training sequence per line. For each vocabulary size
the script times

- ``ByteLevelBPE.train``        (incremental: pair index + lazy heap),
- ``ByteLevelBPE.train_naive``  (recounts every pair after every merge),
- HF ``BpeTrainer`` via ``train_from_iterator`` (Rust, uses every core),

checks that all three learned the same merges, and prints the times with ratios.
Then it times encoding of held-out text (the last 10 % of the lines, never
trained on) with our ``encode`` and with HF, and checks the ids are equal.

How each figure is obtained is printed next to it:
- "best of N": the fastest of N runs (for runs under a few seconds);
- "1 run": one full run;
- "extrapolated": the naive trainer run for its first M merges only, then
  (time per merge) x (merges needed). The first merges are the most expensive
  (the words are longest then), so this over-estimates the naive time.

Usage::

    python bench/bench_bpe.py           # full: naive trainer run to the end at both sizes (a few minutes)
    python bench/bench_bpe.py --quick   # naive trainer extrapolated from its first merges (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from dalle_mini_impl.bpe import ByteLevelBPE, split_lines  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "python_docs_english.txt"
VOCAB_SIZES = (2048, 8192)


def hf_train(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_merges(tok):
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def best_of(n, fn):
    """(fastest time over n runs, result of the last run)."""
    best, result = float("inf"), None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def table(rows, header, align):
    """Print rows under a header; align is one "<" (left) or ">" (right) per column."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(f"{h:{a}{w}}" for h, a, w in zip(header, align, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description="BPE training / encoding benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="extrapolate the naive trainer from its first merges instead of running it to the end")
    parser.add_argument("--naive-merges", type=int, default=100,
                        help="merges the naive trainer runs when its time is extrapolated (default 100)")
    args = parser.parse_args()

    text = FIXTURE.read_text(encoding="utf-8")
    lines = split_lines(text)
    print(f"python {platform.python_version()} | tokenizers {tokenizers.__version__} | "
          f"{os.cpu_count()} cores | HF threads: all cores (TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')})")
    print(f"training text: {FIXTURE.name}, {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(lines):,} lines\n")

    # ------------------------------------------------------------------ training
    rows = []  # list of table rows
    checks = []  # list of str
    ratios = []  # list of float: naive time / our time
    for vocab_size in VOCAB_SIZES:
        n_merges = vocab_size - 256
        t_ours, ours = best_of(3, lambda: ByteLevelBPE.train(lines, vocab_size))
        t_hf, hf = best_of(3, lambda: hf_train(lines, vocab_size))
        checks.append(f"vocab {vocab_size}: ours == HF merges: {ours.merges == hf_merges(hf)}")

        if args.quick:
            start = time.perf_counter()
            partial = ByteLevelBPE.train_naive(lines, 256 + args.naive_merges)
            t_part = time.perf_counter() - start
            t_naive = t_part / args.naive_merges * n_merges
            how_naive = (f"extrapolated: {t_part:.2f} s for the first {args.naive_merges} merges "
                         f"(incl. pre-tokenizing) x {n_merges}/{args.naive_merges}")
            checks.append(f"vocab {vocab_size}: naive == ours on the first {args.naive_merges} merges: "
                          f"{partial.merges == ours.merges[:args.naive_merges]}")
        else:
            start = time.perf_counter()
            naive = ByteLevelBPE.train_naive(lines, vocab_size)
            t_naive = time.perf_counter() - start
            how_naive = "1 run"
            checks.append(f"vocab {vocab_size}: naive == ours merges: {naive.merges == ours.merges}")

        ratios.append(t_naive / t_ours)
        rows.append((vocab_size, n_merges, "ours (incremental)", f"{t_ours:.2f}", "1.00", "best of 3"))
        rows.append((vocab_size, n_merges, "naive (recount)", f"{t_naive:.1f}", f"{t_naive / t_ours:.0f}", how_naive))
        rows.append((vocab_size, n_merges, "HF tokenizers", f"{t_hf:.2f}", f"{t_hf / t_ours:.2f}", "best of 3"))
    table(rows, ("vocab", "merges", "trainer", "seconds", "time / ours", "how measured"), "<><>><")
    print(f"\ngoal: naive / ours >= 20 -> {' and '.join(f'{r:.0f}' for r in ratios)}: "
          f"{'met' if min(ratios) >= 20 else 'NOT met'}")
    for c in checks:
        print("check:", c)

    # ------------------------------------------------------------------ encoding
    cut = len(lines) * 9 // 10
    train_lines, heldout = lines[:cut], lines[cut:]
    mb = len("".join(heldout).encode("utf-8")) / 1e6
    print(f"\nencoding: {len(heldout):,} held-out lines ({mb:.3f} MB), tokenizers trained on the other "
          f"{len(train_lines):,} lines")
    rows = []
    for vocab_size in VOCAB_SIZES:
        ours = ByteLevelBPE.train(train_lines, vocab_size)
        path = REPO / ".cache" / f"bench_bpe_{vocab_size}" / "tokenizer.json"
        ours.save_hf(path)
        hf = Tokenizer.from_file(str(path))

        def ours_cold():
            fresh = ByteLevelBPE(ours.vocab, ours.merges)  # empty piece cache
            return [fresh.encode(line) for line in heldout]

        t_cold, ids_cold = best_of(3, ours_cold)
        ours.encode("warm up")
        [ours.encode(line) for line in heldout]  # fill the cache
        t_warm, _ = best_of(3, lambda: [ours.encode(line) for line in heldout])
        t_hf1, ids_hf = best_of(3, lambda: [hf.encode(line).ids for line in heldout])
        t_hfb, ids_hfb = best_of(3, lambda: [e.ids for e in hf.encode_batch(heldout)])
        same = ids_cold == ids_hf == ids_hfb
        rows.append((vocab_size, "ours, empty piece cache", f"{mb / t_cold:.2f}", "1.00", f"ids == HF: {same}"))
        rows.append((vocab_size, "ours, every piece cached", f"{mb / t_warm:.2f}", f"{t_cold / t_warm:.2f}", ""))
        rows.append((vocab_size, "HF encode, line by line", f"{mb / t_hf1:.2f}", f"{t_cold / t_hf1:.2f}", ""))
        rows.append((vocab_size, "HF encode_batch (all cores)", f"{mb / t_hfb:.2f}", f"{t_cold / t_hfb:.2f}", ""))
    table(rows, ("vocab", "encoder (best of 3)", "MB/s", "speed / ours (empty cache)", "check"), "<<>><")


if __name__ == "__main__":
    main()
