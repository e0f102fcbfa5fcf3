"""The ``dalle-mini-impl`` command line: one subcommand per task of the course.

Each subcommand is a pair of functions: ``add_<name>(subparsers)`` declares its
arguments, ``run_<name>(args)`` does the work by calling the package. Run
``dalle-mini-impl --help`` for the list, ``dalle-mini-impl CMD --help`` for one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The course tokenizer's special tokens: padding, start and end of a caption.
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]

def _tokenizer_path(path: Path | None) -> Path:
    from . import DATA_DIR

    return Path(path) if path is not None else DATA_DIR / "tokenizer" / "bpe.json"


def _write_png(image, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _slug(text: str, limit: int = 48) -> str:
    """``"a red circle!"`` -> ``"a_red_circle"``: a file name from a prompt."""
    keep = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(part for part in keep.split("_") if part)[:limit] or "prompt"


# ---------------------------------------------------------------------------
# tokenize: lesson 1
# ---------------------------------------------------------------------------


def add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="show how the course tokenizer splits text into tokens")
    p.add_argument("text", nargs="+", help="one or more texts (quote each)")
    p.add_argument("--tokenizer", type=Path, default=None, help="a bpe.json (default: the shipped one in data/)")
    p.set_defaults(func=run_tokenize)


def run_tokenize(args: argparse.Namespace) -> int:
    from .bpe import ByteLevelBPE
    from .viz import visible

    tok = ByteLevelBPE.load(_tokenizer_path(args.tokenizer))
    for text in args.text:
        ids = tok.encode(text)
        print(f"{text!r}: {len(ids)} tokens")
        print("  pieces:", " | ".join(visible(p) for p in tok.tokens(text)))
        print("  ids:   ", ids)
    return 0


def add_train_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-tokenizer", help="train the course BPE tokenizer on Shapes training captions")
    p.add_argument("--captions", type=int, default=50_000, help="number of training captions (default: 50000)")
    p.add_argument("--vocab-size", type=int, default=512 + 3, help="specials + 256 bytes + merges (default: 515)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: data/tokenizer)")
    p.set_defaults(func=run_train_tokenizer)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from . import DATA_DIR, shapes
    from .bpe import ByteLevelBPE

    out = args.out if args.out is not None else DATA_DIR / "tokenizer"
    captions = [scene.caption for scene in shapes.make_scenes("train", args.captions, seed=args.seed)]
    tok = ByteLevelBPE.train(captions, vocab_size=args.vocab_size, special_tokens=SPECIAL_TOKENS, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "bpe.json")
    tok.save_hf(out / "tokenizer.json")
    longest = max(len(tok.encode(c)) for c in captions)
    print(f"trained on {len(captions)} captions: {tok.vocab_size} tokens ({len(tok.merges)} merges), "
          f"longest caption {longest} tokens -> {out}")
    return 0


# ---------------------------------------------------------------------------
# render / grade: the Shapes dataset
# ---------------------------------------------------------------------------


def add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="draw a Shapes image for each caption")
    p.add_argument("caption", nargs="+", help="captions in the Shapes grammar, e.g. 'a blue diamond at the top'")
    p.add_argument("--out", type=Path, default=Path("shapes_out"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    import numpy as np

    from . import shapes

    rng = np.random.default_rng(args.seed)
    for caption in args.caption:
        try:
            scene = shapes.scene_for_caption(caption, rng)
        except shapes.CaptionError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        path = args.out / f"{_slug(caption)}.png"
        _write_png(shapes.render(scene), path)
        print(f"{caption!r} -> {path}")
    return 0


def add_grade(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="check whether an image shows what a caption says")
    p.add_argument("image", type=Path)
    p.add_argument("caption")
    p.set_defaults(func=run_grade)


def _grade_line(grade) -> str:
    if not grade.gradable:
        return f"cannot grade: {grade.reason}"
    checks = ", ".join(f"{k} {'ok' if v else 'WRONG'}" for k, v in grade.checks.items() if v is not None)
    return f"{'match' if grade.match else 'no match'} ({checks})"


def run_grade(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from . import shapes

    if not args.image.is_file():
        print(f"error: no image at {args.image}", file=sys.stderr)
        return 2
    image = np.asarray(Image.open(args.image).convert("RGB"))
    grade = shapes.grade(image, args.caption)
    print(_grade_line(grade))
    return 0 if grade.match else 1


# ---------------------------------------------------------------------------
# train-dvae, reconstruct: lesson 2
# ---------------------------------------------------------------------------


def add_train_dvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-dvae", help="train the discrete VAE (images <-> 8x8 codes) on Shapes images")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu", help="model size (default: cpu)")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps; the schedules span them (default: 6000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=60_000, help="training images rendered once (default: 60000)")
    p.add_argument("--out", type=Path, default=Path("runs/dvae"), help="run folder, a loadable model (default: runs/dvae)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on a GPU or a CPU with native bf16, else fp32")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    p.set_defaults(func=run_train_dvae)


def run_train_dvae(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .dvae import DVAEConfig
    from .train import TrainingDiverged, evaluate_reconstructions, format_report, train_dvae

    try:
        model = train_dvae(DVAEConfig.preset(args.preset), steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                           out_dir=args.out, resume=args.resume, n_images=args.images, precision=args.precision,
                           threads=args.threads)
    except (CheckpointError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(evaluate_reconstructions(model.cpu().float(), n_per_split=500, seed=0)))
    return 0


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="round-trip images through the dVAE (encode to codes, decode)")
    p.add_argument("image", nargs="+", type=Path, help="image files, any size (resized to 64x64)")
    p.add_argument("--out", type=Path, required=True, help="folder for the reconstructions (same file names, PNG)")
    p.add_argument("--model", type=Path, default=None, help="a dVAE folder (default: the shipped data/dvae)")
    p.set_defaults(func=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .checkpoints import CheckpointError
    from .train import load_dvae

    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        print(f"error: no image at {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        model = load_dvae(args.model, device="cpu")
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = model.config.image_size
    for path in args.image:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            print(f"error: cannot read {path} as an image ({err})", file=sys.stderr)
            return 2
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float().div(255)[None]  # (1, C, H, W)
        y = model.reconstruct(x)[0].permute(1, 2, 0)  # (H, W, C)
        out = args.out / f"{path.stem}.png"
        _write_png((y * 255).round().to(torch.uint8).numpy(), out)
        print(f"{path} -> {out}")
    return 0


# ---------------------------------------------------------------------------
# demo: what `make demo` runs
# ---------------------------------------------------------------------------


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the course so far on one prompt: tokens, a Shapes image, its grade")
    p.add_argument("prompt", nargs="?", default="a large red circle in the top left")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the images (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from . import shapes
    from .bpe import ByteLevelBPE
    from .viz import visible

    prompt = args.prompt.strip()
    if not prompt:
        print("error: the prompt is empty: give a caption such as 'a blue diamond at the top'", file=sys.stderr)
        return 2
    tok = ByteLevelBPE.load(_tokenizer_path(None))
    print(f"prompt: {prompt!r}")
    print(f"tokens ({len(tok.encode(prompt))}):", " | ".join(visible(p) for p in tok.tokens(prompt)))
    try:
        scene = shapes.scene_for_caption(prompt, np.random.default_rng(args.seed))
    except shapes.CaptionError as err:
        print(f"this prompt is outside the Shapes grammar, so no reference image can be drawn: {err}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{_slug(prompt)}.png"
    image = shapes.render(scene)
    _write_png(image, args.out / name)
    print(f"rendered -> {args.out / name}: {_grade_line(shapes.grade(image, prompt))}")
    results = {"results": [{"prompt": prompt, "images": [name]}]}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")
    return 0


COMMANDS = [add_demo, add_tokenize, add_train_tokenizer, add_render, add_grade, add_train_dvae, add_reconstruct]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dalle-mini-impl",
        description="A DALL·E-style text-to-image model built from scratch on the Shapes dataset.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
