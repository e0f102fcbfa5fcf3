"""Is this GPU ready for the course? One command, one table, a few minutes.

On a CUDA machine (``make gpu-check``, or ``python bench/gpu_check.py``):

  1. the precision the training loops pick here (bf16 only where it is native:
     compute capability 8.0+; a T4 gets fp32) and whether flex attention runs;
  2. flex attention against dense attention on the GPU, forward and backward,
     for each of DALL·E's mask kinds: the largest difference;
  3. each model's ``gpu`` preset trained for ``--seconds`` with its own loop
     (``train_dvae``, ``train_transformer``, ``train_clip``): steps per second;
  4. the KV-cached sampler against recomputing the prefix, same generator:
     the codes must be equal; images per second for both.

On a machine without a GPU it says so and exits 0 (``--device cpu`` runs every
step on the CPU with tiny sizes: what the tests do, to keep this script working).

Does not handle: several GPUs (run ``torchrun`` with the training commands for
that), or a comparison with other implementations (``bench/bench_sampling.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dalle_mini_impl import attention, sampling, train_common
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.clip import CLIPConfig
from dalle_mini_impl.dvae import DVAEConfig
from dalle_mini_impl.dvae import load as load_dvae
from dalle_mini_impl.train_clip import train_clip
from dalle_mini_impl.train_dvae import train_dvae
from dalle_mini_impl.train_transformer import train_transformer
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig, config_for

TINY_DVAE = {"enc_width": 8, "dec_width": 8, "codebook_dim": 16, "vocab_size": 32}
TINY_TRANSFORMER = {"d_model": 32, "n_heads": 4, "n_layers": 4}
TINY_CLIP = {"d_model": 32, "n_heads": 2, "stem_width": 8, "embed_dim": 16, "text_layers": 1, "image_layers": 1}


def attention_check(device: str, tiny: bool) -> list[tuple[str, str]]:
    """flex vs dense, forward and backward, on each mask kind: the largest absolute differences."""
    if not attention.FLEX_AVAILABLE:
        return [("flex attention", "not in this PyTorch (needs 2.5+): dense only")]
    rows = []
    d, heads, text_len, grid = (32, 4, 8, 4) if tiny else (512, 8, 32, 8)
    for kind in attention.MASK_KINDS:
        mask = attention.build_mask(kind, text_len, grid)
        torch.manual_seed(0)
        flex = attention.MaskedSelfAttention(d, heads, mask, backend="flex").to(device)
        dense = attention.MaskedSelfAttention(d, heads, mask, backend="dense").to(device)
        dense.load_state_dict(flex.state_dict())
        x = torch.randn(4, mask.shape[0], d, device=device, requires_grad=True)
        try:
            y_flex = flex(x) if device.startswith("cuda") else flex(x.detach())  # (no flex backward on a CPU)
        except Exception as err:  # noqa: BLE001 (any failure is what "auto" falls back from)
            rows.append((f"flex vs dense ({kind})", f"flex fails here ({type(err).__name__}): auto uses dense"))
            continue
        y_dense = dense(x) if device.startswith("cuda") else dense(x.detach())
        result = f"forward {(y_flex - y_dense).abs().max().item():.1e}"
        try:
            g_flex, = torch.autograd.grad(y_flex.square().sum(), x)
            g_dense, = torch.autograd.grad(y_dense.square().sum(), x)
            result += f", backward {(g_flex - g_dense).abs().max().item():.1e}"
        except Exception as err:  # noqa: BLE001 (reported, not raised)
            result += f", backward fails here ({type(err).__name__})"
        rows.append((f"flex vs dense ({kind})", result))
    return rows


def steps_per_second(train, seconds: float) -> float:
    """Run a training function for about ``seconds`` (it trains in chunks of 5 steps); its steps per second."""
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        train(out, until=5, resume=False)  # the first chunk pays for compilation: not timed
        t0, step = time.perf_counter(), 5
        while time.perf_counter() - t0 < seconds and step < 1000:
            train(out, until=step + 5, resume=True)
            step += 5
        return (step - 5) / (time.perf_counter() - t0)


def training_check(device: str, seconds: float, tiny: bool) -> list[tuple[str, str]]:
    quiet = {"progress": False, "log": lambda _: None, "device": device, "threads": 1}
    dvae_config = DVAEConfig(**TINY_DVAE) if tiny else DVAEConfig.preset("gpu")
    clip_config = CLIPConfig(**TINY_CLIP) if tiny else CLIPConfig.preset("gpu")
    rows = []

    def dvae(out, until, resume):
        train_dvae(dvae_config, steps=1000, batch_size=8 if tiny else 64, n_images=64 if tiny else 4096,
                   out_dir=out / "dvae", until=until, resume=resume, checkpoint_every=5, sample_every=10**6, **quiet)

    rows.append(("dVAE gpu preset", f"{steps_per_second(dvae, seconds):.2f} steps/s"))
    with tempfile.TemporaryDirectory() as tmp:  # the transformer learns the codes of a (barely) trained dVAE
        dvae_dir = Path(tmp) / "dvae"
        train_dvae(DVAEConfig(**TINY_DVAE), steps=2, batch_size=4, n_images=16, out_dir=dvae_dir, **quiet)
        config = (config_for(load_tokenizer(), load_dvae(dvae_dir, device="cpu"), "cpu", **TINY_TRANSFORMER)
                  if tiny else "gpu")

        def transformer(out, until, resume):
            train_transformer(config, dvae_dir=dvae_dir, steps=1000, batch_size=8 if tiny else 64,
                              n_images=64 if tiny else 4096, out_dir=out / "transformer", until=until, resume=resume,
                              checkpoint_every=5, sample_every=10**6, eval_prompts=0, cache_dir=Path(tmp) / "cache",
                              **quiet)

        rows.append(("transformer gpu preset", f"{steps_per_second(transformer, seconds):.2f} steps/s"))

    def clip(out, until, resume):
        train_clip(clip_config, steps=1000, batch_size=8 if tiny else 128, out_dir=out / "clip", until=until,
                   resume=resume, checkpoint_every=5, eval_every=0, **quiet)

    rows.append(("CLIP gpu preset", f"{steps_per_second(clip, seconds):.2f} steps/s"))
    return rows


def sampling_check(device: str, tiny: bool) -> list[tuple[str, str]]:
    """The KV-cached sampler must draw the codes recomputing the prefix draws; and how much faster it is."""
    config = TransformerConfig(**(TINY_TRANSFORMER if tiny else TransformerConfig.preset("gpu").to_dict()))
    torch.manual_seed(0)
    model = DalleTransformer(config).to(device).eval()
    batch = 4 if tiny else 32
    text = torch.randint(3, config.text_vocab_size, (batch, config.text_len))
    text[:, 0], text[:, 12:] = config.bos_id, config.pad_id
    timings, codes = {}, {}
    for name, fn in (("KV cache", sampling.sample), ("recomputed prefix", sampling.sample_reference)):
        generator = torch.Generator(device=device).manual_seed(0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        codes[name] = fn(model, text, top_k=50, condition_scale=1.25, generator=generator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[name] = batch / (time.perf_counter() - t0)
    same = torch.equal(codes["KV cache"], codes["recomputed prefix"])
    return [("sampler: KV cache = recomputed prefix", "equal codes" if same else "DIFFERENT CODES"),
            ("sampling speed", (f"{timings['KV cache']:.1f} images/s with the cache, "
                               f"{timings['recomputed prefix']:.1f} without"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda when available; cpu runs it tiny")
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per model (default: 30)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("gpu-check needs a CUDA GPU and this machine has none: nothing to check. "
              "(On Colab: Runtime > Change runtime type > GPU.)")
        return 0
    tiny = not device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if not tiny else "cpu (tiny sizes)"
    rows = [("device", name), ("precision chosen by auto", train_common.resolve_precision("auto", device))]
    if not tiny:
        major, minor = torch.cuda.get_device_capability()
        rows.append(("compute capability", f"{major}.{minor}"))
    rows += attention_check(device, tiny)
    rows += training_check(device, args.seconds, tiny)
    rows += sampling_check(device, tiny)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 1 if any("DIFFERENT" in v for _, v in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
