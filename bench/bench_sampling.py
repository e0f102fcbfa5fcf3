"""How fast do we draw images? KV-cached sampling vs recomputing the prefix vs DALLE-pytorch.

Prints images per second (64 codes each, random weights: speed does not depend
on what the model learned) for, in one run:

  * ours with the KV cache      ``dalle_mini_impl.sampling.sample``
  * ours without it             ``dalle_mini_impl.sampling.sample_reference``
  * DALLE-pytorch 1.6.6         ``DALLE.generate_images(..., use_cache=True)`` at the same
                                width, depth, heads and grid, with its sparse attention types
                                (axial_row, axial_col, axial_row, conv_like: the same layer
                                schedule as ours), with and without ``optimize_for_inference``
                                (which lets its row and column layers use the cache; its
                                conv_like layer never does). Its tiny dVAE's decode time is
                                measured separately and subtracted, so all rows time sampling only.

DALLE-pytorch lives in its own virtual environment, never in the course's .venv:

    python bench/bench_sampling.py --make-venv     # creates .cache/bench-venv (a few minutes)
    python bench/bench_sampling.py                 # runs everything; DALLE-pytorch rows if that venv exists

``--make-venv`` installs the same torch version as the running interpreter,
``dalle-pytorch==1.6.6 --no-deps`` and only what ``import dalle_pytorch`` needs.
One of those, taming-transformers (used only by its VQGAN wrapper, which this
benchmark does not build), cannot be imported next to torch 2.x: its import
chain needs pytorch_lightning < 1.8 and a torchvision built for the same torch.
So the setup writes a placeholder ``taming.models.vqgan`` whose classes raise if
anyone builds a VQGAN.

Timing: the best of ``--repeats`` runs after a warm-up, on ``--threads`` CPU
threads (default 1: on a shared 2-core machine, two processes' intra-op
threads fighting for the cores make timings swing tenfold; pass 2 on an idle one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".cache" / "bench-venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"

# the course's default sizes, shared by both implementations
TEXT_LEN, TEXT_VOCAB, IMAGE_VOCAB, IMAGE_SIZE, DOWNSAMPLE_LAYERS = 32, 515, 512, 64, 3  # 64 / 2³ = an 8×8 grid
WIDTH, DEPTH, HEADS = 256, 4, 8
TOP_K = 100  # DALLE-pytorch's filter_thres=0.9 keeps ≈ 10% of its 1059 logits: about the same

TAMING_PLACEHOLDER = '''"""Placeholder: DALLE-pytorch imports these VQGAN classes; the benchmark never builds one."""


class VQModel:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("taming-transformers is not installed in this benchmark environment")


GumbelVQ = VQModel
'''


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------------------
# DALLE-pytorch, run inside .cache/bench-venv
# ---------------------------------------------------------------------------


def dalle_pytorch_worker(batch: int, repeats: int) -> dict:
    """Time DALLE-pytorch's generate_images; runs under the bench venv's python."""
    import warnings

    warnings.filterwarnings("ignore")
    import dalle_pytorch
    from dalle_pytorch import DALLE, DiscreteVAE

    torch.manual_seed(0)
    # a dVAE as small as it goes: we time the transformer
    vae = DiscreteVAE(image_size=IMAGE_SIZE, num_layers=DOWNSAMPLE_LAYERS, num_tokens=IMAGE_VOCAB,
                      codebook_dim=64, hidden_dim=16, num_resnet_blocks=0)
    text = torch.randint(3, TEXT_VOCAB, (batch, TEXT_LEN))
    result = {"version": dalle_pytorch.__version__}
    codes = torch.randint(0, IMAGE_VOCAB, (batch, 64))
    with torch.no_grad():
        result["decode_s"] = best_time(lambda: vae.decode(codes), repeats)
    for optimize in (True, False):
        model = DALLE(dim=WIDTH, vae=vae, num_text_tokens=TEXT_VOCAB, text_seq_len=TEXT_LEN, depth=DEPTH,
                      heads=HEADS, dim_head=WIDTH // HEADS,
                      attn_types=("axial_row", "axial_col", "axial_row", "conv_like"),
                      optimize_for_inference=optimize).eval()
        result[f"params_{optimize}"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds = best_time(lambda: model.generate_images(text, use_cache=True, filter_thres=0.9), repeats)
        result[f"optimize_{optimize}_s"] = seconds - result["decode_s"]
    return result


def make_venv() -> None:
    """Create .cache/bench-venv with DALLE-pytorch 1.6.6 and what its import needs."""
    pip = [str(BENCH_PYTHON), "-m", "pip", "install", "--quiet"]
    torch_version = torch.__version__.split("+")[0]
    steps = [
        [sys.executable, "-m", "venv", str(BENCH_VENV)],
        pip + [f"torch=={torch_version}", "numpy", "einops", "pillow", "pyyaml", "requests", "tqdm", "packaging",
               "regex", "omegaconf", "setuptools<81"],  # setuptools: dalle_pytorch imports pkg_resources
        pip + ["--no-deps", "dalle-pytorch==1.6.6", "rotary-embedding-torch==0.2.3",  # the versions of its day
               "axial-positional-embedding==0.2.1"],
    ]
    for step in steps:
        print("+", " ".join(step), flush=True)
        subprocess.run(step, check=True)
    site = Path(subprocess.run([str(BENCH_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "taming" / "models").mkdir(parents=True, exist_ok=True)
    (site / "taming" / "__init__.py").write_text("")
    (site / "taming" / "models" / "__init__.py").write_text("")
    (site / "taming" / "models" / "vqgan.py").write_text(TAMING_PLACEHOLDER)
    print("+ wrote the placeholder package", site / "taming")
    subprocess.run([str(BENCH_PYTHON), "-W", "ignore", "-c", "import dalle_pytorch; print('dalle_pytorch',"
                    " dalle_pytorch.__version__, 'imports')"], check=True)


# ---------------------------------------------------------------------------
# ours, and the table
# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per sampling call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (the best counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every row")
    parser.add_argument("--make-venv", action="store_true", help="create .cache/bench-venv and exit")
    parser.add_argument("--dalle-pytorch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.make_venv:
        return make_venv()
    if args.dalle_pytorch_worker:
        print(json.dumps(dalle_pytorch_worker(args.batch, args.repeats)))
        return

    sys.path.insert(0, str(REPO))
    from dalle_mini_impl.sampling import sample, sample_reference
    from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = TransformerConfig.preset("cpu", text_vocab_size=TEXT_VOCAB, image_vocab_size=IMAGE_VOCAB,
                                      d_model=WIDTH, n_layers=DEPTH, n_heads=HEADS)
    model = DalleTransformer(config).to(device).eval()
    text = torch.randint(3, TEXT_VOCAB, (args.batch, TEXT_LEN), device=device)
    started = time.perf_counter()
    print(f"sampling {config.n_image} codes per image | {model.num_params() / 1e6:.2f} M params, d={WIDTH}, "
          f"{DEPTH} layers ({', '.join(config.mask_kinds)}), {HEADS} heads | batch {args.batch} | "
          f"torch {torch.__version__}, {device}, {args.threads} thread(s) | best of {args.repeats}", flush=True)

    def ours(sampler):
        return lambda: sampler(model, text, top_k=TOP_K, generator=torch.Generator(device).manual_seed(0))

    rows = {"ours, KV cache (sample)": best_time(ours(sample), args.repeats)}
    rows["ours, no cache (sample_reference)"] = best_time(ours(sample_reference), args.repeats)

    dalle = None
    if BENCH_PYTHON.exists():
        worker = subprocess.run([str(BENCH_PYTHON), __file__, "--dalle-pytorch-worker", "--batch", str(args.batch),
                                 "--repeats", str(args.repeats), "--threads", str(args.threads)],
                                capture_output=True, text=True)
        if worker.returncode == 0:
            dalle = json.loads(worker.stdout.strip().splitlines()[-1])
            name = f"DALLE-pytorch {dalle['version']} generate_images, use_cache=True"
            rows[f"{name}, optimize_for_inference=True"] = dalle["optimize_True_s"]
            rows[f"{name}, optimize_for_inference=False"] = dalle["optimize_False_s"]
        else:
            print("DALLE-pytorch run failed:\n" + worker.stderr[-2000:])
    else:
        print(f"(no DALLE-pytorch rows: {BENCH_VENV} is missing; create it with "
              f"`python bench/bench_sampling.py --make-venv`)")

    fastest = rows["ours, KV cache (sample)"]
    width = max(len(name) for name in rows)
    print(f"{'':{width}}  {'s / batch':>9}  {'images/s':>9}  {'time / KV cache':>15}")
    for name, seconds in rows.items():
        print(f"{name:{width}}  {seconds:9.3f}  {args.batch / seconds:9.1f}  {seconds / fastest:14.1f}×")
    ratios = [f"{rows['ours, no cache (sample_reference)'] / fastest:.1f}× over no cache"]
    if dalle:
        print(f"(DALLE-pytorch: {dalle['params_True'] / 1e6:.2f} M params, its other options at their defaults; "
              f"its dVAE decode, {dalle['decode_s'] * 1e3:.1f} ms per batch, is subtracted)")
        ratios.append(f"{min(v for k, v in rows.items() if k.startswith('DALLE')) / fastest:.1f}× over "
                      "DALLE-pytorch's fastest setting")
    print("KV-cached sampling: " + ", ".join(ratios) + " (goal: at least 5×)")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
