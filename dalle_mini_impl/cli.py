"""The ``dalle-mini-impl`` command line: one subcommand per task of the course.

Each subcommand is a pair of functions: ``add_<name>(subparsers)`` declares its
arguments, ``run_<name>(args)`` does the work by calling the package. Run
``dalle-mini-impl --help`` for the list, ``dalle-mini-impl CMD --help`` for one.

Exit codes: 0 done; 1 ``grade``: the image does not match; 2 an error (bad
input, a file that cannot be read or written), one line on stderr, nothing
half-written; 3 ``grade``: the image cannot be graded; 130 interrupted (Ctrl-C).

Outputs never overwrite or mix: a command that writes a folder (``generate``,
``render``, ``reconstruct``, ``demo``, ``export``) builds it beside ``--out``
and renames it into place, and refuses an ``--out`` that is not empty unless
``--overwrite`` is given (then the old folder is replaced as a whole). The
training commands refuse a folder holding a finished model without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .defaults import CONDITION_SCALE, SPECIAL_TOKENS, TEMPERATURE

# Seeds: one rule for every command. 2**32 values: NumPy's legacy generator (seeded by training) takes no more,
# and a seed that would be reduced modulo 2**32 would silently repeat another seed's images.
MAX_SEED = 2**32 - 1
# Images read by grade / reconstruct: far more than the 64×64 the models see; a bigger file is refused
# before it is decoded (a 20000×10000 PNG would take 600 MB of memory).
MAX_IMAGE_PIXELS = 50_000_000


def _seed(text: str) -> int:
    """``--seed``: an integer from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED}, got {value}")
    return value


def _bounded_float(low: float, high: float):
    """An argparse type: a finite float in [low, high] (so nan, inf and 1e300 are refused before any work)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not low <= value <= high:  # (False for nan)
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


_temperature = _bounded_float(1e-3, 1e3)  # below 1e-3 the logits / T overflow float32
_cond_scale = _bounded_float(0.0, 100.0)  # 1 plain sampling, > 1 follows the prompt more


def _text_problem(args: argparse.Namespace) -> str | None:
    """Which text argument is not valid UTF-8 (Python keeps such bytes as lone surrogates), or None."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and any("\udc80" <= c <= "\udcff" for c in text):
                return f"{name} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 text"
    return None


def _read_image(path: Path):
    """An image file -> uint8 (H, W, 3) RGB; ``ValueError`` (naming the file) when it cannot be used.

    Refuses what is not an image and images over ``MAX_IMAGE_PIXELS`` before
    decoding them; 16-bit greyscale is scaled to 8 bits (a plain conversion
    would clip every value above 255 to white), transparency becomes white.
    """
    import warnings

    import numpy as np
    from PIL import Image

    from .images import as_rgb8

    if not path.is_file():
        raise ValueError(f"no image at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path} is {image.size[0]}×{image.size[1]} pixels; images over "
                                 f"{MAX_IMAGE_PIXELS:,} pixels are refused")
            return np.asarray(as_rgb8(image))  # 16-bit greyscale scaled, transparency white
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # too big even to open
        raise ValueError(f"{path}: {err}; images over {MAX_IMAGE_PIXELS:,} pixels are refused") from err
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read {path} as an image ({err})") from err


def _unique_name(stem: str, used: set[str], suffix: str = ".png") -> str:
    """``stem + suffix``, or ``stem_2 + suffix``, ``stem_3`` … when taken; the name is added to ``used``.

    Example: "x" twice -> "x.png", then "x_2.png" (two inputs never share an output file).
    """
    name, n = f"{stem}{suffix}", 1
    while name.lower() in used:
        n += 1
        name = f"{stem}_{n}{suffix}"
    used.add(name.lower())
    return name



def _add_training_flags(p: argparse.ArgumentParser, model: str, steps: int, batch_size: int,
                        batch_help: str = "", precision_help: str = "", preset: bool = True) -> None:
    """The flags every ``train-*`` command shares, declared once."""
    if preset:
        p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu", help="model size (default: cpu)")
    p.add_argument("--steps", type=_positive_int, default=steps,
                   help=f"optimizer steps; the schedules span them (default: {steps})")
    p.add_argument("--batch-size", type=_positive_int, default=batch_size,
                   help=f"{batch_help or 'examples per step'} (default: {batch_size}; under torchrun: in all, "
                        "split over the processes)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, default=Path("runs") / model,
                   help=f"run folder, a loadable model (default: runs/{model})")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the model or run already in --out")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help=precision_help or "auto: bf16 autocast on a GPU or a CPU with native bf16, else fp32")
    p.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (default: 2)")

def _fail(message: str) -> int:
    """Print a one-line error and return the exit code of errors, 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def _tokenizer_path(path: Path | None) -> Path:
    from . import DATA_DIR

    return Path(path) if path is not None else DATA_DIR / "tokenizer" / "bpe.json"


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
    from .bpe import ByteLevelBPE, visible

    path = _tokenizer_path(args.tokenizer)
    if not path.is_file():
        return _fail(f"--tokenizer: no tokenizer file at {path}; create one with "
                     "`dalle-mini-impl train-tokenizer --out FOLDER` (it writes FOLDER/bpe.json)")
    try:
        tok = ByteLevelBPE.load(path)
    except (OSError, ValueError) as err:  # garbage or truncated: the message names the file
        return _fail(f"--tokenizer: {err}")
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
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: data/tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace the tokenizer already in --out")
    p.set_defaults(func=run_train_tokenizer, parser=p)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from . import DATA_DIR, shapes
    from .bpe import ByteLevelBPE

    out = args.out if args.out is not None else DATA_DIR / "tokenizer"
    if (out / "bpe.json").exists() and not args.overwrite:
        return _fail(f"{out} already holds a tokenizer (bpe.json); pass --overwrite to replace it, "
                     "or choose another --out")
    problem = _unwritable(out)
    if problem:
        return _fail(f"--out: {problem}")
    captions = [scene.caption for scene in shapes.make_scenes("train", args.captions, seed=args.seed)]
    tok = ByteLevelBPE.train(captions, vocab_size=args.vocab_size, special_tokens=SPECIAL_TOKENS, progress=True)
    from .checkpoints import _atomic_write

    _atomic_write(out / "tokenizer.json", tok.save_hf)
    _atomic_write(out / "bpe.json", tok.save)
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
    p.add_argument("--out", type=Path, default=Path("shapes_out"),
                   help="a new or empty folder for the PNGs (default: shapes_out)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    import numpy as np

    from . import shapes

    from .checkpoints import CheckpointError, staged_folder
    from .images import save_png

    rng = np.random.default_rng(args.seed)
    try:
        scenes = [shapes.scene_for_caption(caption, rng) for caption in args.caption]
    except shapes.CaptionError as err:
        return _fail(str(err))
    lines, used = [], set()  # type: list[str], set[str]
    try:
        with staged_folder(args.out, overwrite=args.overwrite) as folder:
            for caption, scene in zip(args.caption, scenes):
                name = _unique_name(_slug(caption), used)  # two captions with one slug get two files
                save_png(shapes.render(scene), folder / name)
                lines.append(f"{caption!r} -> {args.out / name}")
    except CheckpointError as err:
        return _fail(str(err))
    print("\n".join(lines))
    return 0


def add_grade(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="check whether an image shows what a caption says "
                                     "(exit 0 match, 1 no match, 3 cannot grade, 2 error)")
    p.add_argument("image", type=Path)
    p.add_argument("caption")
    p.set_defaults(func=run_grade)


def _grade_line(grade) -> str:
    if not grade.gradable:
        return f"cannot grade: {grade.reason}"
    checks = ", ".join(f"{k} {'ok' if v else 'WRONG'}" for k, v in grade.checks.items() if v is not None)
    return f"{'match' if grade.match else 'no match'} ({checks})"


GRADE_NO_MATCH, GRADE_CANNOT = 1, 3  # grade's exit codes besides 0 (match) and 2 (an error)


def run_grade(args: argparse.Namespace) -> int:
    from . import grader

    try:
        image = _read_image(args.image)
    except ValueError as err:
        return _fail(str(err))
    grade = grader.grade(image, args.caption)
    print(_grade_line(grade))
    if not grade.gradable:
        return GRADE_CANNOT
    return 0 if grade.match else GRADE_NO_MATCH


# ---------------------------------------------------------------------------
# train-dvae, reconstruct: lesson 2
# ---------------------------------------------------------------------------


def add_train_dvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-dvae", help="train the discrete VAE (images <-> 8x8 codes) on Shapes images")
    _add_training_flags(p, "dvae", steps=3500, batch_size=32, batch_help="images per step")
    p.add_argument("--images", type=_positive_int, default=60_000, help="training images rendered once (default: 60000)")
    p.add_argument("--source", choices=["images_all", "train"], default="images_all",
                   help="images_all: every colour-shape pair (the dVAE never reads a caption); "
                        "train: without the held-out pairs (default: images_all)")
    p.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                   help="override one DVAEConfig field of the preset, e.g. --set logit_init_scale=1.0 (repeatable)")
    p.add_argument("--sample-every", type=_positive_int, default=500,
                   help="save the reconstructions of 8 held-out images to samples/step_N.png every this many steps "
                        "(default: 500)")
    p.set_defaults(func=run_train_dvae, parser=p)


def _config_overrides(pairs: list[str], config_cls) -> dict:
    """``["lr=0.001", "hard=true"]`` -> ``{"lr": 0.001, "hard": True}``, typed like the config's defaults.

    ``ValueError`` for an unknown field, a value of the wrong type (``hard=maybe``,
    ``n_layers=four``) or a size below 1 (``vocab_size=0``), naming the field.
    """
    import dataclasses

    from .checkpoints import config_problems

    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default, optional = fields[key].default, "None" in str(fields[key].type)
        try:
            if optional and value.lower() == "none":  # an optional field such as res_gain: None is its other choice
                out[key] = None
            elif isinstance(default, bool):
                out[key] = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[value.lower()]
            else:
                out[key] = float(value) if default is None else type(default)(value)
        except (KeyError, ValueError):
            kind = "true or false" if isinstance(default, bool) else type(default).__name__
            raise ValueError(f"--set {pair!r}: {key} must be {kind}") from None
    problems = config_problems(config_cls, out)
    if problems:
        raise ValueError("--set: " + "; ".join(problems))
    return out


def run_train_dvae(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .distributed import is_main
    from .dvae import DVAEConfig
    from .evaluate import evaluate_reconstructions, format_reconstruction_report
    from .train_common import TrainingDiverged
    from .train_dvae import train_dvae

    _check_out(args)
    try:
        config = DVAEConfig.preset(args.preset, **_config_overrides(args.set, DVAEConfig))
    except (ValueError, ZeroDivisionError) as err:
        return _fail(str(err))
    _set_aside_for_overwrite(args)
    try:
        model = train_dvae(config, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                           out_dir=args.out, resume=args.resume, n_images=args.images, source=args.source,
                           sample_every=args.sample_every, precision=args.precision, threads=args.threads)
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        return _fail(str(err) + _replaced_note(args))
    _drop_replaced(args)
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    print(format_reconstruction_report(evaluate_reconstructions(model.cpu().float(), n_per_split=500, seed=0)))
    return 0


def add_finetune_dvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune-dvae", help="train a dVAE's decoder on its own hard codes with a pixel loss "
                                             "(encoder frozen): sharper edges")
    p.add_argument("model", type=Path, help="the dVAE folder to start from (it is not changed)")
    p.add_argument("--loss", choices=["l1", "mse"], default="l1",
                   help="l1: |x - x̂|, sharp edges (default); mse: squared error")
    p.add_argument("--lr", type=_positive_float, default=5e-4, help="peak learning rate (default: 5e-4)")
    p.add_argument("--images", type=_positive_int, default=30_000,
                   help="training images, encoded to codes once (default: 30000)")
    p.add_argument("--source", choices=["images_all", "train"], default="images_all",
                   help="images_all: every colour-shape pair; train: without the held-out pairs (default: images_all)")
    _add_training_flags(p, "dvae_finetuned", steps=2000, batch_size=32, batch_help="images per step", preset=False)
    p.set_defaults(func=run_finetune_dvae, parser=p)


def run_finetune_dvae(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .distributed import is_main
    from .evaluate import evaluate_reconstructions, format_reconstruction_report
    from .train_common import TrainingDiverged
    from .train_dvae import finetune_decoder

    _check_out(args)
    _set_aside_for_overwrite(args)
    try:
        model = finetune_decoder(args.model, args.out, steps=args.steps, loss=args.loss, lr=args.lr,
                                 batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                                 n_images=args.images, source=args.source, precision=args.precision,
                                 threads=args.threads)
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        return _fail(str(err) + _replaced_note(args))
    _drop_replaced(args)
    if is_main():
        print(format_reconstruction_report(evaluate_reconstructions(model.cpu().float(), n_per_split=500, seed=0)))
    return 0


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="round-trip images through the dVAE (encode to codes, decode)")
    p.add_argument("image", nargs="+", type=Path, help="image files, any size (resized to 64x64)")
    p.add_argument("--out", type=Path, required=True,
                   help="a new or empty folder for the reconstructions (same file names, PNG; x_2.png … for repeats)")
    p.add_argument("--model", type=Path, default=None, help="a dVAE folder (default: the shipped data/dvae)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(func=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .checkpoints import CheckpointError, staged_folder
    from .dvae import load as load_dvae
    from .images import save_png, to_float_images, to_uint8_images

    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        return _fail(f"no image at {', '.join(missing)}")
    lines, used = [], set()  # type: list[str], set[str]
    try:
        with staged_folder(args.out, overwrite=args.overwrite) as folder:
            model = load_dvae(args.model, device="cpu")
            size = model.config.image_size
            for path in args.image:
                image = Image.fromarray(_read_image(path))
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                x = to_float_images(np.array(image)[None])  # (1, C, H, W)
                name = _unique_name(path.stem, used)  # a/x.png and b/x.png -> x.png and x_2.png
                save_png(to_uint8_images(model.reconstruct(x))[0], folder / name)
                lines.append(f"{path} -> {args.out / name}")
    except (CheckpointError, ValueError) as err:
        return _fail(str(err))
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------
# train-transformer, generate: lessons 3 and 5
# ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _check_out(args: argparse.Namespace) -> None:
    """A usage error (exit 2, nothing written) when ``args.out`` cannot be written, or --overwrite meets --resume."""
    problem = _unwritable(args.out)
    if problem:
        args.parser.error(f"--out: {problem}")
    if getattr(args, "overwrite", False) and getattr(args, "resume", False):
        args.parser.error("--overwrite starts over and --resume continues: give one of them")


# What a training run keeps in its folder; --overwrite sets them aside so that the run starts over.
RUN_FILES = ("train_state.pt", "model.safetensors", "config.json", "training.json", "metrics.jsonl",
             "evals.jsonl", "samples")


def _replaced_folder(out: Path) -> Path:
    return out.with_name(out.name + ".replaced")


def _set_aside_for_overwrite(args: argparse.Namespace) -> None:
    """With ``--overwrite``, move what the run will replace into ``<out>.replaced``: kept until the new run finishes.

    ``train-all`` sets aside its whole run folder; the other training commands
    only their model and run files (nothing else in ``--out`` is touched). A
    run that fails or is interrupted leaves the old model there, and says so.
    """
    from .distributed import is_main

    args.replaced = None
    if not getattr(args, "overwrite", False) or not is_main() or not args.out.is_dir():
        return
    if args.command == "train-all":
        names = [p.name for p in args.out.iterdir()]
    else:
        names = [name for name in RUN_FILES if (args.out / name).exists()]
    if not names:
        return
    import shutil

    aside = _replaced_folder(args.out)
    shutil.rmtree(aside, ignore_errors=True)  # an earlier run's leftovers
    aside.mkdir(parents=True)
    for name in names:
        (args.out / name).rename(aside / name)
    args.replaced = aside
    print(f"--overwrite: the old model is kept in {aside} until this run finishes")


def _replaced_note(args: argparse.Namespace) -> str:
    """For an error message: where the model that --overwrite set aside still is."""
    aside = getattr(args, "replaced", None)
    return f" (the model it was to replace is kept in {aside})" if aside is not None else ""


def _drop_replaced(args: argparse.Namespace) -> None:
    """The new run finished: what ``--overwrite`` set aside goes."""
    import shutil

    if getattr(args, "replaced", None) is not None:
        shutil.rmtree(args.replaced, ignore_errors=True)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def add_train_transformer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-transformer", help="train the transformer (captions -> dVAE codes) on Shapes")
    _add_training_flags(p, "transformer", steps=2400, batch_size=64, batch_help="(caption, codes) pairs per step")
    p.add_argument("--dvae", type=Path, default=None, help="the dVAE whose codes it learns (default: data/dvae)")
    p.add_argument("--until", type=_positive_int, default=None,
                   help="stop after this step (continue later with --resume)")
    p.add_argument("--images", type=_positive_int, default=60_000,
                   help="training scenes, encoded to codes once and cached in .cache/ (default: 60000)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate (default: the config's, 1e-3); the same as --set lr=...")
    p.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                   help="override one TransformerConfig field of the preset, e.g. --set n_layers=6 or "
                        "--set warmup_frac=0.1 (repeatable)")
    p.add_argument("--eval-prompts", type=_count, default=200,
                   help="test and compositional captions graded after training, each (default: 200; 0 skips)")
    p.add_argument("--sample-eval-prompts", type=_count, default=32,
                   help="test captions graded at every sample PNG during training, logged to evals.jsonl "
                        "(default: 32; 0 skips)")
    p.set_defaults(func=run_train_transformer, parser=p)


def run_train_transformer(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .bpe import load_tokenizer
    from .evaluate import evaluate_samples, format_sample_report
    from .train_common import TrainingDiverged
    from .train_transformer import load_dvae_to_learn, train_transformer
    from .transformer import TransformerConfig, config_for

    _check_out(args)
    try:
        overrides = _config_overrides(args.set + ([f"lr={args.lr}"] if args.lr is not None else []),
                                      TransformerConfig)
        config = config_for(load_tokenizer(), load_dvae_to_learn(args.dvae, device="cpu"), args.preset, **overrides)
    except (CheckpointError, ValueError) as err:
        return _fail(str(err))
    _set_aside_for_overwrite(args)
    try:
        model = train_transformer(config, dvae_dir=args.dvae, steps=args.steps, batch_size=args.batch_size,
                                  seed=args.seed, out_dir=args.out, resume=args.resume, until=args.until,
                                  n_images=args.images, eval_prompts=args.sample_eval_prompts,
                                  precision=args.precision, threads=args.threads)
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        return _fail(str(err) + _replaced_note(args))
    from .distributed import is_main

    finished = args.until is None or args.until >= args.steps
    if finished:
        _drop_replaced(args)
    if args.eval_prompts > 0 and finished and is_main():  # under torchrun, rank 0 reports
        from .dvae import load as load_dvae

        model = model.float()
        dvae, tokenizer = load_dvae(args.dvae, device=str(model.image_head.weight.device)), load_tokenizer()
        for split in ("test", "compositional"):
            print(format_sample_report(evaluate_samples(model, dvae, tokenizer, split, args.eval_prompts, seed=0,
                                                        progress=True)))
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="draw images for prompts: sample N, rerank with CLIP, keep the best K")
    p.add_argument("prompt", nargs="+", help="one or more prompts (quote each), e.g. 'a blue diamond at the top'")
    p.add_argument("--candidates", type=_positive_int, default=16, help="N images sampled per prompt (default: 16)")
    p.add_argument("--keep", type=_positive_int, default=4, help="K best images kept per prompt, K <= N (default: 4)")
    p.add_argument("--seed", type=_seed, default=0, help="a prompt and a seed always give the same images")
    p.add_argument("--out", type=Path, required=True,
                   help="a new or empty folder for the PNGs, contact sheets and results.json")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (as a whole, never mixed)")
    p.add_argument("--temperature", type=_temperature, default=TEMPERATURE,
                   help=f"< 1 sharper, > 1 more varied (default: {TEMPERATURE})")
    p.add_argument("--top-k", type=_positive_int, default=None, help="sample among the k most likely codes")
    p.add_argument("--top-p", type=_probability, default=None, help="sample among the codes holding mass p")
    p.add_argument("--cond-scale", type=_cond_scale, default=CONDITION_SCALE,
                   help=f"condition scale: 1 plain sampling, > 1 follows the prompt more (default: {CONDITION_SCALE})")
    p.add_argument("--models", type=Path, default=None,
                   help="a folder with tokenizer/, dvae/, transformer/ and optionally clip/ (default: data/)")
    p.add_argument("--no-clip", action="store_true", help="skip CLIP reranking even when a CLIP model exists")
    p.set_defaults(func=run_generate, parser=p)


def _unwritable(out: Path) -> str | None:
    """Why files cannot be written under ``out``, or None when they can.

    A temporary file is created (and removed) in ``out`` or its nearest
    existing parent: permission bits do not tell (root may write anywhere by
    them, yet not in ``/proc``).
    """
    import tempfile

    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a folder"
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {out}: {parent} is a file"
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        where = f"{out}" if parent == out else f"{out} (in {parent})"
        return f"cannot write {where}: {err.strerror or err}"
    return None


def _write_generation(results, folder: Path, out: Path) -> tuple[list[dict], list[str]]:
    """Write each result's PNGs and contact sheet into ``folder``; returns the results.json entries and the
    lines to print (naming the files by ``out``, where ``folder`` is moved at the end)."""
    from . import grader
    from .images import contact_sheet, save_png

    entries, lines = [], []
    for i, result in enumerate(results):
        stem = f"{i:02d}_{_slug(result.prompt)}"
        names = [f"{stem}_{rank}.png" for rank in range(len(result.images))]
        for name, image in zip(names, result.images):
            save_png(image, folder / name)
        save_png(contact_sheet(result.images), folder / f"{stem}_sheet.png")
        entry = {"prompt": result.prompt, "images": names}
        if result.scores is not None:
            entry["clip_scores"] = [round(float(s), 6) for s in result.scores]
        entries.append(entry)
        grades = [grader.grade(image, result.prompt) for image in result.images]
        graded = (f"{sum(g.match for g in grades)}/{len(grades)} match the prompt" if grades[0].gradable
                  else "not gradable (outside the Shapes grammar)")
        scores = "" if result.scores is None else " | CLIP " + " ".join(f"{s:.3f}" for s in result.scores)
        lines.append(f"{result.prompt!r}: {out / stem}_*.png, {graded}{scores}")
    return entries, lines


def _generate_into(folder: Path, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Load the models, draw ``args.prompt`` and write the images into ``folder`` (see ``_write_generation``)."""
    from .pipeline import generate, load_models

    models = load_models(args.models, clip=not args.no_clip)
    results = generate(args.prompt, models.transformer, models.dvae, models.tokenizer, candidates=args.candidates,
                       keep=args.keep, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, condition_scale=args.cond_scale, clip_model=models.clip, progress=True)
    return _write_generation(results, folder, args.out)


def run_generate(args: argparse.Namespace) -> int:
    import json

    from .checkpoints import CheckpointError, staged_folder

    if args.keep > args.candidates:
        args.parser.error(f"--keep ({args.keep}) cannot exceed --candidates ({args.candidates})")
    if any(not prompt.strip() for prompt in args.prompt):
        args.parser.error("a prompt is empty: give a caption such as 'a blue diamond at the top'")
    problem = _unwritable(args.out)
    if problem:
        args.parser.error(f"--out: {problem}")
    try:
        # the folder is created first (the test that --out is writable), filled, then renamed onto --out
        with staged_folder(args.out, overwrite=args.overwrite) as folder:
            entries, lines = _generate_into(folder, args)
            (folder / "results.json").write_text(json.dumps({"results": entries}, indent=2) + "\n")
    except CheckpointError as err:
        return _fail(str(err))
    print("\n".join(lines))
    print(f"wrote {args.out / 'results.json'}")
    return 0


# ---------------------------------------------------------------------------
# train-clip: lesson 4
# ---------------------------------------------------------------------------


def add_train_clip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-clip", help="train CLIP (captions <-> images in one space) on fresh Shapes pairs")
    _add_training_flags(p, "clip", steps=1500, batch_size=128, batch_help="pairs per step, the negatives of InfoNCE",
                        precision_help="auto: bf16 autocast on a GPU, fp32 on a CPU (a CLIP step is no faster there)")
    p.add_argument("--hard-negatives", action=argparse.BooleanOptionalAction, default=None,
                   help="add, for every pair, its caption with one stated attribute changed (half the time the "
                        "relation reversed) as an extra wrong answer: teaches CLIP to read relations "
                        "(default: on, as in both presets)")
    p.set_defaults(func=run_train_clip, parser=p)


def run_train_clip(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .clip import CLIPConfig
    from .distributed import is_main
    from .evaluate import evaluate_clip, format_clip_report
    from .train_clip import train_clip
    from .train_common import TrainingDiverged

    _check_out(args)
    _set_aside_for_overwrite(args)
    try:
        overrides = {} if args.hard_negatives is None else {"hard_negatives": args.hard_negatives}
        config = CLIPConfig.preset(args.preset, **overrides)
        model = train_clip(config, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                           out_dir=args.out, resume=args.resume, precision=args.precision, threads=args.threads)
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        return _fail(str(err) + _replaced_note(args))
    _drop_replaced(args)
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    print(format_clip_report(evaluate_clip(model.cpu().float(), n=500, seed=0)))
    return 0


# ---------------------------------------------------------------------------
# train-all: the four models in order, on Shapes or your own images
# ---------------------------------------------------------------------------


def add_train_all(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-all", help="train the tokenizer, dVAE, transformer and CLIP in order into one run "
                                         "folder (Shapes or your images); run it again to resume")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder of images (png, jpg, jpeg, webp), each with a .txt caption file of the same name, "
                        "searched recursively (default: Shapes, which reproduces the shipped models)")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                   help="model sizes and run lengths (default: cpu, the shipped models' plan)")
    p.add_argument("--out", type=Path, default=Path("runs/all"),
                   help="the run folder; generate --models reads it (default: runs/all)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on a GPU (and for the dVAE on a CPU with native bf16), else fp32")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="CPU threads per process (default: 1, as the shipped models were trained)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: the run folder is set aside in <out>.replaced until the new run finishes")
    p.set_defaults(func=run_train_all, parser=p)


def run_train_all(args: argparse.Namespace) -> int:
    import dataclasses

    from .checkpoints import CheckpointError
    from .folder_data import FolderDataError
    from .train_common import TrainingDiverged
    from .train_all import PLANS, train_all

    if args.data is not None and not args.data.is_dir():
        args.parser.error(f"--data: {args.data} is not a folder; give a folder of images with .txt captions")
    _check_out(args)
    if args.data is not None and args.overwrite:  # read the folder first: a bad --data must not set the old run aside
        from .folder_data import FolderDataset
        from .train_all import dvae_config

        try:
            FolderDataset(args.data, image_size=dvae_config(PLANS[args.preset]).image_size, warn=False)
        except FolderDataError as err:
            args.parser.error(f"--data: {err}")
    _set_aside_for_overwrite(args)
    try:
        train_all(args.out, data=args.data, plan=dataclasses.replace(PLANS[args.preset], seed=args.seed),
                  precision=args.precision, threads=args.threads)
    except FolderDataError as err:  # read before anything is written
        args.parser.error(f"--data: {err}")
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        return _fail(str(err) + _replaced_note(args))
    _drop_replaced(args)
    return 0


# ---------------------------------------------------------------------------
# evaluate: lesson 5, the whole pipeline measured
# ---------------------------------------------------------------------------


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="grade sampled images: random sample vs CLIP top-1 vs any of the top K")
    p.add_argument("--split", choices=["seen", "compositional", "both"], default="both",
                   help="seen: new scenes of trained colour-shape pairs; compositional: held-out pairs (default: both)")
    p.add_argument("--prompts", type=_positive_int, default=200, help="captions per split (default: 200)")
    p.add_argument("--candidates", type=_positive_int, default=16, help="N images sampled per caption (default: 16)")
    p.add_argument("--keep", type=_positive_int, default=4, help="K best images per caption, K <= N (default: 4)")
    p.add_argument("--seed", type=_seed, default=0, help="picks the captions and seeds the sampler (default: 0)")
    p.add_argument("--models", type=Path, default=None,
                   help="a folder with tokenizer/, dvae/, transformer/ and optionally clip/ (default: data/)")
    p.add_argument("--out", type=Path, default=None, help="also write the report(s) to this JSON file (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace the file --out if it exists")
    p.add_argument("--temperature", type=_temperature, default=TEMPERATURE,
                   help=f"< 1 sharper, > 1 more varied (default: {TEMPERATURE})")
    p.add_argument("--top-k", type=_positive_int, default=None, help="sample among the k most likely codes")
    p.add_argument("--top-p", type=_probability, default=None, help="sample among the codes holding mass p")
    p.add_argument("--cond-scale", type=_cond_scale, default=CONDITION_SCALE,
                   help=f"condition scale: 1 plain sampling, > 1 follows the prompt more (default: {CONDITION_SCALE})")
    p.set_defaults(func=run_evaluate, parser=p)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from .checkpoints import CheckpointError, _write_text
    from .evaluate import evaluate_splits, format_evaluation
    from .pipeline import load_models

    if args.keep > args.candidates:
        args.parser.error(f"--keep ({args.keep}) cannot exceed --candidates ({args.candidates})")
    if args.out is not None:
        problem = (f"{args.out} is a folder: give a file name such as report.json" if args.out.is_dir()
                   else f"{args.out} exists; pass --overwrite to replace it" if args.out.exists() and not args.overwrite
                   else _unwritable(args.out.parent))
        if problem:
            args.parser.error(f"--out: {problem}")
    try:
        models = load_models(args.models)
    except CheckpointError as err:
        return _fail(str(err))
    splits = ["seen", "compositional"] if args.split == "both" else [args.split]
    reports = evaluate_splits(models, splits, n_prompts=args.prompts, candidates=args.candidates, keep=args.keep,
                              seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              condition_scale=args.cond_scale, progress=True)
    print("\n\n".join(format_evaluation(report) for report in reports.values()))
    if args.out is not None:
        _write_text(args.out, json.dumps(reports, indent=1) + "\n")  # atomic: a killed run leaves no half file
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------
# demo: what `make demo` runs
# ---------------------------------------------------------------------------


DEMO_PROMPT = "a small blue square to the left of a large red circle"  # also the Makefile's PROMPT


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the course on one prompt: tokens, a reference Shapes image, then 16 samples "
                                    "reranked to the best 4 (once the transformer is trained)")
    p.add_argument("prompt", nargs="?", default=DEMO_PROMPT, help=f"default: {DEMO_PROMPT!r}")
    p.add_argument("--out", type=Path, default=Path("demo_out"),
                   help="a new or empty folder for the images (default: demo_out)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (as a whole, never mixed)")
    p.set_defaults(func=run_demo, parser=p)


def run_demo(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from . import DATA_DIR, grader, shapes
    from .bpe import ByteLevelBPE, visible
    from .checkpoints import CheckpointError, staged_folder
    from .images import save_png
    from .pipeline import CREATE_COMMANDS

    prompt = args.prompt.strip()
    if not prompt:
        return _fail("the prompt is empty: give a caption such as 'a blue diamond at the top'")
    try:
        tok = ByteLevelBPE.load(_tokenizer_path(None))
    except (OSError, ValueError) as err:
        return _fail(str(err))
    generate_too = (DATA_DIR / "transformer" / "config.json").is_file()
    try:
        with staged_folder(args.out, overwrite=args.overwrite) as folder:  # renamed onto --out at the end
            print(f"prompt: {prompt!r}")
            print(f"tokens ({len(tok.encode(prompt))}):", " | ".join(visible(p) for p in tok.tokens(prompt)))

            # 1. the reference: the Shapes renderer draws the prompt exactly (when it is in the grammar)
            name, entries, lines = None, [], []
            try:
                scene = shapes.scene_for_caption(prompt, np.random.default_rng(args.seed))
            except shapes.CaptionError as err:
                print(f"this prompt is outside the Shapes grammar, so no reference image can be drawn: {err}")
            else:
                name = f"{_slug(prompt)}.png"
                image = shapes.render(scene)
                save_png(image, folder / name)
                print(f"reference render -> {args.out / name}: {_grade_line(grader.grade(image, prompt))}")
                entries = [{"prompt": prompt, "images": [name]}]

            # 2. the models draw it: what `generate` does, with the shipped models
            if generate_too:
                print("sampling 16 candidates, keeping the best 4 ...")
                entries, lines = _generate_into(folder, argparse.Namespace(
                    prompt=[prompt], candidates=16, keep=4, seed=args.seed, out=args.out, temperature=TEMPERATURE,
                    top_k=None, top_p=None, cond_scale=CONDITION_SCALE, models=DATA_DIR, no_clip=False))
            else:
                command = CREATE_COMMANDS["transformer"].format(dir=DATA_DIR / "transformer", dvae=DATA_DIR / "dvae")
                print(f"generation needs the trained transformer ({DATA_DIR / 'transformer' / 'config.json'} is "
                      f"missing): train it with `{command}`")
            if entries:
                (folder / "results.json").write_text(json.dumps({"results": entries}, indent=2) + "\n")
    except CheckpointError as err:
        return _fail(str(err))
    if lines:
        print("\n".join(lines))
    if entries:
        print(f"wrote {args.out / 'results.json'}")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a model folder with its weights in half precision (how data/ ships)")
    p.add_argument("src", type=Path, help="a model folder: config.json + model.safetensors (e.g. runs/dvae)")
    p.add_argument("dst", type=Path, help="a new or empty folder for the copy (e.g. data/dvae)")
    p.add_argument("--overwrite", action="store_true", help="replace what dst holds")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="how the floating-point weights are stored (default: float16)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import CheckpointError, export_model

    try:
        out = export_model(args.src, args.dst, getattr(torch, args.dtype), overwrite=args.overwrite)
    except CheckpointError as err:
        return _fail(str(err))
    size = (out / "model.safetensors").stat().st_size
    print(f"{args.src} -> {out} ({args.dtype} weights, {size / 1e6:.1f} MB)")
    return 0


COMMANDS = [add_demo, add_tokenize, add_train_tokenizer, add_render, add_grade, add_train_dvae, add_finetune_dvae,
            add_reconstruct,
            add_train_transformer, add_generate, add_train_clip, add_train_all, add_evaluate, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dalle-mini-impl",
        description="A DALL·E-style text-to-image model built from scratch on the Shapes dataset.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


TRAINING_COMMANDS = ("train-dvae", "finetune-dvae", "train-transformer", "train-clip", "train-all")


def _last_checkpoint(args: argparse.Namespace) -> str:
    """Where a training command can resume from, for the messages after Ctrl-C or a full disk."""
    from .checkpoints import STATE_NAME, saved_step

    if args.command == "train-all":
        return "run the same command again to resume"
    step = saved_step(args.out / STATE_NAME)
    if step is None:
        return "no checkpoint was saved yet"
    return f"the last checkpoint, {args.out / STATE_NAME}, is at step {step}: resume with the same command and --resume"


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input, an unwritable file and Ctrl-C end in one line and an exit code, not a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _text_problem(args)
    if problem:
        parser.error(problem)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        where = _last_checkpoint(args) if args.command in TRAINING_COMMANDS else "nothing was written"
        print(f"\ninterrupted; {where}{_replaced_note(args)}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a file that vanished: the message names the file
        if err.strerror and err.filename:
            what = f"{err.filename}: {err.strerror}"
        elif getattr(args, "out", None):  # no file named: say which output it was writing
            what = f"{err.strerror or err} (writing in {args.out})"
        else:
            what = str(err)
        hint = f"; {_last_checkpoint(args)}" if args.command in TRAINING_COMMANDS else ""
        return _fail(f"{what}{hint}")


if __name__ == "__main__":
    sys.exit(main())
