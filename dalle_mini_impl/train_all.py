"""The whole course in one command: tokenizer → dVAE → transformer → CLIP, into one run folder.

Scope. ``train_all`` (the CLI's ``dalle-mini-impl train-all``) trains the four
models in order, each by the lesson's own function, and writes::

    RUN_DIR/
        run.json       the data, the plan and the seed it was started with; seconds spent per stage
        tokenizer/     bpe.json, tokenizer.json                  (lesson 1: byte-level BPE)
        dvae/          config.json, model.safetensors, ...       (lesson 2: train_dvae.train_dvae)
        transformer/   config.json, model.safetensors, ...       (lesson 3: train_transformer.train_transformer,
                                                                   on dVAE codes encoded once and cached)
        clip/          config.json, model.safetensors, ...       (lesson 4: train_clip.train_clip)

the layout ``pipeline.load_models(RUN_DIR)`` reads, so ``dalle-mini-impl
generate PROMPT --models RUN_DIR`` draws with the new models.

* Nothing is lost: every stage checkpoints atomically as it trains. Run the
  same command again after a kill (or a crash, or a power cut) and finished
  stages are skipped, the interrupted one resumes from its last checkpoint,
  and the result is the same as an uninterrupted run. A run folder started
  with other data or another plan is refused, naming the difference.
* Without ``data``: Shapes. The ``cpu`` plan is exactly the commands that made
  the shipped models (``data/*/README.md``), so it reproduces them.
* With ``data``: a folder of your images with captions (``folder_data``). The
  tokenizer learns from its captions, the dVAE from its images (resized and
  centre-cropped to 64×64), the transformer and CLIP from both.
* Under torchrun every training stage runs data-parallel (``distributed``);
  rank 0 alone trains the tokenizer and writes files.

Does not handle: changing the plan of a run half-way (start a new folder),
training only some of the models on your data (train them one by one with
the ``train-*`` commands), or evaluating the result (``dalle-mini-impl evaluate
--models RUN_DIR`` does, on Shapes). Resuming is exact on a CPU with the
shipped plans; a dVAE with ``restart_every`` > 0 counts code usage afresh
after a resume (the count is not in the checkpoint), so its restarts, and the
weights, can differ from an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints, distributed, shapes
from .defaults import SPECIAL_TOKENS
from .folder_data import FolderDataset

STAGES = ("tokenizer", "dvae", "transformer", "clip")  # in the order they train: each needs the ones before
RUN_INFO = "run.json"


# ---------------------------------------------------------------------------
# the plan: how long and how big each stage trains
# ---------------------------------------------------------------------------


@dataclass
class RunPlan:
    """Steps, batch sizes and model sizes of the four stages; ``PLANS["cpu"]`` made the shipped models."""

    preset: str = "cpu"  # model sizes: DVAEConfig / TransformerConfig / CLIPConfig .preset(preset)
    seed: int = 0
    tokenizer_captions: int = 50_000  # Shapes training captions the tokenizer learns from (your data: all its captions)
    vocab_size: int = 512 + 3  # 3 specials + 256 bytes + up to 256 merges
    dvae_steps: int = 3500
    dvae_batch_size: int = 32
    dvae_images: int = 60_000  # Shapes training images, rendered once
    transformer_steps: int = 2400
    transformer_batch_size: int = 64
    transformer_images: int = 60_000  # Shapes training scenes, encoded to codes once and cached
    clip_steps: int = 1500
    clip_batch_size: int = 128  # fresh Shapes pairs per step (your data: random images)
    checkpoint_every: int | None = None  # None: each loop's default (200 / 200 / 100 steps)
    sample_every: int | None = None  # sample PNGs (dVAE, transformer) and CLIP's evaluation; None: each loop's default
    eval_prompts: int = 32  # Shapes test captions graded at each transformer sample step (0: none)
    dvae_config: dict = field(default_factory=dict)  # overrides of the preset's fields, e.g. {"enc_width": 8}
    transformer_config: dict = field(default_factory=dict)  # e.g. {"lr": 5e-4}: learning rates are config fields
    clip_config: dict = field(default_factory=dict)


PLANS = {
    # = the commands in data/tokenizer, data/dvae/README.md, data/clip/README.md and train-transformer's defaults
    "cpu": RunPlan(),
    # bigger models, batches and runs for one GPU (sizes chosen, not yet measured)
    "gpu": RunPlan(preset="gpu", dvae_steps=10_000, dvae_batch_size=128, transformer_steps=10_000,
                   transformer_batch_size=256, clip_steps=3000, clip_batch_size=256),
}


def dvae_config(plan: RunPlan):
    from .dvae import DVAEConfig

    return DVAEConfig.preset(plan.preset, **plan.dvae_config)


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder, the data it trains on and how: what every stage function reads."""

    out_dir: Path
    plan: RunPlan
    data: FolderDataset | None  # None: Shapes
    device: str
    precision: str = "auto"
    threads: int | None = 1
    cache_dir: Path | None = None  # dVAE codes (default: the repository's .cache/)
    progress: bool = True
    log: Callable[[str], None] = print

    def dir(self, stage: str) -> Path:
        return self.out_dir / stage

    @property
    def tokenizer_path(self) -> Path:
        return self.dir("tokenizer") / "bpe.json"

    def loop_options(self) -> dict:
        """The keyword arguments every training loop takes the same way."""
        return dict(precision=self.precision, device=self.device, threads=self.threads, progress=self.progress,
                    log=self.log)


def _describe(data: FolderDataset | None) -> dict:
    """What a run trains on, as compared on resume: the same pixels and captions, wherever the folder is now."""
    if data is None:
        return {"data": "shapes"}
    return {"data": "folder", "data_sha256": data.fingerprint, "images": len(data)}


def open_run(
    out_dir: str | Path,
    data: str | Path | FolderDataset | None = None,
    plan: RunPlan | str = "cpu",
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Run:
    """Read the data, check or create ``out_dir/run.json``, and return the ``Run`` every stage works on.

    ``plan``: a ``RunPlan`` or the name of one in ``PLANS``. ``data``: a folder
    of images with captions (or a ``FolderDataset``), None for Shapes. Raises
    ``FolderDataError`` for a folder without a usable pair, ``CheckpointError``
    when ``out_dir`` holds a run started with other data or another plan.
    """
    if isinstance(plan, str):
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}; choose one of {sorted(PLANS)}")
        plan = PLANS[plan]
    device = distributed.setup(device)  # joins the other processes when launched by torchrun
    main = distributed.is_main()
    log, progress = (log, progress) if main else ((lambda _: None), False)
    if data is not None and not isinstance(data, FolderDataset):
        with warnings.catch_warnings():
            if not main:
                warnings.simplefilter("ignore")  # rank 0 says which files are skipped, once
            data = FolderDataset(data, image_size=dvae_config(plan).image_size, progress=progress)
    if data is not None and data.image_size != dvae_config(plan).image_size:
        raise ValueError(f"the images of {data.root} were loaded at {data.image_size}×{data.image_size} but the "
                         f"dVAE reads {dvae_config(plan).image_size}×{dvae_config(plan).image_size}")
    if data is not None:
        log(f"data: {len(data)} images with {sum(map(len, data.captions))} captions from {data.root}"
            + (f" ({len(data.skipped)} files skipped)" if data.skipped else ""))
    out_dir = Path(out_dir)
    wanted = {**_describe(data), "plan": dataclasses.asdict(plan)}
    path = out_dir / RUN_INFO
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = [k for k in wanted if saved.get(k) != wanted[k]]
        if diff:
            shown = "; ".join(_difference(k, saved.get(k), wanted[k]) for k in diff)
            raise checkpoints.CheckpointError(
                f"{path}: this run folder was started with other settings ({shown}). Run the command it was "
                "started with to continue it, or choose another --out folder")
    elif main:
        where = {} if data is None else {"data_root": str(data.root)}
        checkpoints._write_text(path, json.dumps({**wanted, **where, "seconds": {}}, indent=2) + "\n")
    distributed.barrier()
    return Run(out_dir, plan, data, device, precision, threads, Path(cache_dir) if cache_dir else None, progress, log)


def _difference(key: str, saved, wanted) -> str:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        fields = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        return ", ".join(f"{key}.{k}: saved {saved.get(k)!r} vs now {wanted.get(k)!r}" for k in fields)
    return f"{key}: saved {saved!r} vs now {wanted!r}"


def stage_finished(run: Run, stage: str) -> bool:
    """True when ``stage`` has nothing left to do in ``run.out_dir``."""
    if stage == "tokenizer":
        return run.tokenizer_path.is_file()  # written last, atomically
    steps = {"dvae": run.plan.dvae_steps, "transformer": run.plan.transformer_steps, "clip": run.plan.clip_steps}
    return checkpoints.saved_step(run.dir(stage) / checkpoints.STATE_NAME) == steps[stage]


def _every(run: Run, sample_name: str) -> dict:
    """``checkpoint_every`` and the loop's sampling-interval argument, when the plan sets them."""
    out = {}
    if run.plan.checkpoint_every is not None:
        out["checkpoint_every"] = run.plan.checkpoint_every
    if run.plan.sample_every is not None:
        out[sample_name] = run.plan.sample_every
    return out


# ---------------------------------------------------------------------------
# the four stages
# ---------------------------------------------------------------------------


def train_tokenizer_stage(run: Run) -> None:
    """Byte-level BPE on the Shapes training captions (or every caption of your data); rank 0 only."""
    from .bpe import ByteLevelBPE

    if distributed.is_main():
        if run.data is None:  # the same captions as `dalle-mini-impl train-tokenizer`
            captions = [s.caption for s in shapes.make_scenes("train", run.plan.tokenizer_captions, seed=run.plan.seed)]
        else:
            captions = run.data.caption_table()[0]
        tok = ByteLevelBPE.train(captions, vocab_size=run.plan.vocab_size, special_tokens=SPECIAL_TOKENS,
                                 progress=run.progress)
        folder = run.dir("tokenizer")
        checkpoints._atomic_write(folder / "tokenizer.json", tok.save_hf)
        checkpoints._atomic_write(run.tokenizer_path, tok.save)  # last: its presence marks the stage finished
        run.log(f"tokenizer: {tok.vocab_size} tokens ({len(tok.merges)} merges) from {len(captions)} captions "
                f"-> {folder}")
    distributed.barrier()  # the other ranks wait for the file


def train_dvae_stage(run: Run, until: int | None = None):
    """The dVAE of lesson 2 on Shapes images (or yours)."""
    from .train_dvae import train_dvae

    plan, data = run.plan, run.data
    return train_dvae(dvae_config(plan), steps=plan.dvae_steps, batch_size=plan.dvae_batch_size, seed=plan.seed,
                      out_dir=run.dir("dvae"), resume=True, until=until, n_images=plan.dvae_images,
                      images=None if data is None else data.images,
                      preview_images=None if data is None else data.images[:8],
                      **_every(run, "sample_every"), **run.loop_options())


def train_transformer_stage(run: Run, until: int | None = None):
    """The transformer of lesson 3 on the dVAE's codes of Shapes images (or yours), encoded once."""
    from .bpe import load_tokenizer
    from .dvae import load as load_dvae
    from .train_transformer import train_transformer
    from .transformer import config_for

    plan = run.plan
    config = config_for(load_tokenizer(run.tokenizer_path), load_dvae(run.dir("dvae"), device="cpu"), plan.preset,
                        **plan.transformer_config)
    return train_transformer(config, dvae_dir=run.dir("dvae"), steps=plan.transformer_steps,
                             batch_size=plan.transformer_batch_size, seed=plan.seed, out_dir=run.dir("transformer"),
                             resume=True, until=until, tokenizer_path=run.tokenizer_path,
                             # Shapes: n_images scenes, graded as it trains; your images: all of them, ungraded
                             n_images=None if run.data else plan.transformer_images,
                             eval_prompts=None if run.data else plan.eval_prompts,
                             cache_dir=run.cache_dir, data=run.data, **_every(run, "sample_every"),
                             **run.loop_options())


def train_clip_stage(run: Run, until: int | None = None):
    """The CLIP of lesson 4 on fresh Shapes pairs (or your images and captions)."""
    from .clip import CLIPConfig
    from .train_clip import train_clip
    from .bpe import load_tokenizer
    from .transformer import TransformerConfig

    plan, data = run.plan, run.data
    overrides = dict(plan.clip_config)
    if data is not None:  # your captions may be longer than Shapes': read as many tokens as the transformer does
        text_len = TransformerConfig.preset(plan.preset, **plan.transformer_config).text_len
        overrides = {"text_len": text_len, "image_size": data.image_size, **overrides}
    return train_clip(CLIPConfig.preset(plan.preset, **overrides), steps=plan.clip_steps,
                      batch_size=plan.clip_batch_size, seed=plan.seed, out_dir=run.dir("clip"), resume=True,
                      tokenizer=load_tokenizer(run.tokenizer_path), until=until, data=data,
                      **_every(run, "eval_every"), **run.loop_options())


STAGE_FUNCTIONS = {"tokenizer": train_tokenizer_stage, "dvae": train_dvae_stage,
                   "transformer": train_transformer_stage, "clip": train_clip_stage}


def _add_seconds(run: Run, stage: str, seconds: float) -> None:
    """Add the time a stage trained to ``run.json`` (rank 0; kept across resumed runs)."""
    if not distributed.is_main():
        return
    path = run.out_dir / RUN_INFO
    info = json.loads(path.read_text())
    info["seconds"][stage] = round(info["seconds"].get(stage, 0.0) + seconds, 1)
    checkpoints._write_text(path, json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------
# all of it
# ---------------------------------------------------------------------------


def train_all(
    out_dir: str | Path = "runs/all",
    data: str | Path | FolderDataset | None = None,
    plan: RunPlan | str = "cpu",
    precision: str = "auto",
    device: str | None = None,
    threads: int | None = 1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stages: Sequence[str] = STAGES,
) -> dict[str, float]:
    """Train the tokenizer, the dVAE, the transformer and CLIP into ``out_dir``; returns seconds per stage.

    Finished stages are skipped (0 seconds), an interrupted one resumes from
    its last checkpoint. ``stages``: a subset, in ``STAGES`` order (each needs
    the ones before it on disk). The other arguments are ``open_run``'s.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    run = open_run(out_dir, data, plan, precision, device, threads, cache_dir, progress, log)
    seconds = {}
    for stage in [s for s in STAGES if s in stages]:
        if stage_finished(run, stage):
            run.log(f"{stage}: finished earlier ({run.dir(stage)}), skipped")
            seconds[stage] = 0.0
            continue
        run.log(f"--- {stage} ---")
        t0 = time.time()
        STAGE_FUNCTIONS[stage](run)
        seconds[stage] = time.time() - t0
        _add_seconds(run, stage, seconds[stage])
    run.log("seconds per stage: " + ", ".join(f"{s} {t:.0f}" for s, t in seconds.items())
            + f"\ndraw with: dalle-mini-impl generate \"a prompt\" --models {run.out_dir} --out out/")
    return seconds
