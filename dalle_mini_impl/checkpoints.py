"""Checkpoints on disk: a folder with ``config.json`` + ``model.safetensors``, and a resume file.

Scope. Every model of the course (dVAE, transformer, CLIP) is a ``@dataclass``
config plus an ``nn.Module`` built from it, and is shipped as::

    some_model/
        config.json         {"model_type": "dvae", <the dataclass fields>}
        model.safetensors   the weights (safetensors: plain tensors, never pickle)

A training run also keeps ``train_state.pt`` next to them: the model, the
optimizer's state dict, the step and the random number generators, written by
``torch.save`` and read by ``torch.load(weights_only=True)`` (tensors and plain
Python values only: loading runs no code from the file), so that a killed run
resumes exactly where it stopped. Every file is written to a
temporary name and then renamed (``os.replace`` is atomic), so a kill during a
save leaves the previous checkpoint intact (and at most a stray ``.*.tmp``
file, which the next ``start_or_resume`` in that folder removes).

Loading checks everything it can and raises ``CheckpointError`` naming the
file, what was expected and what was found: a missing file, a truncated or
corrupt file, a config for another model type, with unknown fields, a field of
the wrong type or a size that is not positive, a tensor missing, extra, or of
the wrong shape (e.g. weights trained with another config), a training state
whose bytes no longer match the checksum stored with it.

Nothing is overwritten by accident: a training run refuses a folder that holds
a finished model (weights without a training state, such as ``data/*`` or an
``export``), and ``staged_folder`` builds a whole output folder beside its
destination and moves it into place in one rename.

Does not handle: sharded checkpoints, weights in pickled ``.pt``/``.bin`` files
(the weights are safetensors only), or optimizers whose state is not made of
tensors, numbers and strings.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "train_state.pt"

C = TypeVar("C")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the same folder, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except (RuntimeError, SafetensorError) as err:  # how torch.save and safetensors report a failed write
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(errno.EIO, f"could not be written ({first_line}; {free:.0f} MB free on its disk)",
                      str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed save left in ``folder``; returns what was removed.

    A save killed by SIGKILL (or a power cut) cannot clean up after itself;
    the file it was writing is incomplete and was never renamed into place.
    """
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def folder_in_use(folder: str | Path) -> bool:
    """True when ``folder`` exists and holds anything (an output folder that would be overwritten or mixed)."""
    folder = Path(folder)
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new, empty folder beside ``out``; when the block ends without an error it becomes ``out``.

    The outputs of one run appear together or not at all: a failure (a full
    disk, Ctrl-C) removes the temporary folder and leaves ``out`` as it was.
    ``out`` must be missing or empty, unless ``overwrite``: then the old
    folder is replaced as a whole, never mixed with the new files. Two runs
    writing to one ``out`` at the same time cannot mix either: each builds its
    own folder, and the second to finish finds ``out`` full and stops with an
    error (its results stay in the temporary folder it names).

    Creating the temporary folder is also the test that ``out`` is writable,
    made before any work starts: enter the block first, then compute.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder; choose a folder name")
    if folder_in_use(out) and not overwrite:
        raise CheckpointError(f"{out} is not empty; pass --overwrite to replace it, or choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise CheckpointError(f"{out}: cannot write here ({e.strerror or e})") from e
    try:
        yield tmp
        if not any(tmp.iterdir()):  # nothing to show: nothing appears
            shutil.rmtree(tmp)
            return
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output folder is an ordinary one
        if overwrite and folder_in_use(out):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)  # aside first: `out` then holds either the old run or the new one
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out)  # onto a missing or empty folder only: a full one raises
            except OSError as e:
                kept = tmp
                tmp = None  # keep the results: they are complete
                raise CheckpointError(f"{out} was filled by another run meanwhile; nothing was mixed. "
                                      f"This run's files are in {kept}") from e
    except BaseException:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def trim_log(path: str | Path, step: int) -> None:
    """Keep the rows of a JSON-lines log (``metrics.jsonl``) up to ``step``: a resumed run writes the rest again.

    A last line cut short (a run killed while appending it) is dropped; any
    other line that is not a JSON object with a ``step`` is an error naming
    the file and the line. Example: rows for steps 250, 500, 750 and half a
    row, resumed at 500 -> the rows for 250 and 500.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from e
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row_step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if all(not rest.strip() for rest in lines[number:]):  # the last line, torn by a kill: drop it
                break
            raise CheckpointError(f"{path}: line {number} is not a JSON object with a step ({e}); "
                                  "fix or delete the line, then resume") from e
        if row_step <= step:
            kept.append(line)
    _write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------


def save_config(config: Any, out_dir: str | Path, model_type: str) -> Path:
    """Write ``out_dir/config.json``: ``{"model_type": ..., **dataclasses.asdict(config)}``."""
    path = Path(out_dir) / CONFIG_NAME
    _write_text(path, json.dumps({"model_type": model_type, **dataclasses.asdict(config)}, indent=2) + "\n")
    return path


def load_config(model_dir: str | Path, config_cls: type[C], model_type: str) -> C:
    """Read ``model_dir/config.json`` into ``config_cls``, checking the model type and the field names."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: file not found; expected a {model_type} checkpoint folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is truncated or corrupt") from e
    found = data.pop("model_type", None) if isinstance(data, dict) else None
    if found != model_type:
        raise CheckpointError(f"{path}: expected model_type {model_type!r}, found {found!r}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown {config_cls.__name__} fields {unknown}; expected only {sorted(known)}")
    problems = config_problems(config_cls, data)
    if problems:
        raise CheckpointError(f"{path}: invalid {config_cls.__name__}: " + "; ".join(problems))
    try:
        return config_cls(**data)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: invalid {config_cls.__name__}: {e}") from e


# Sizes and counts: a model cannot be built with 0 or fewer of them (an ``n_heads`` of 0 divides by zero).
POSITIVE_FIELDS = {
    "image_size", "channels", "downsample", "vocab_size", "codebook_dim", "enc_width", "dec_width",
    "blocks_per_group", "text_vocab_size", "image_vocab_size", "text_len", "grid", "d_model", "n_layers",
    "n_heads", "mlp_ratio", "conv_kernel", "stem_width", "text_layers", "image_layers", "embed_dim",
}


def config_problems(config_cls: type, values: dict[str, Any]) -> list[str]:
    """What is wrong with ``values`` as fields of the dataclass ``config_cls`` ([] when nothing).

    Each value must have the type of its field's default (an int where an int
    is expected, a number where a float is, true/false where a bool is; None
    only where the field allows it), floats must be finite, and sizes
    (``POSITIVE_FIELDS``) at least 1.
    Example: {"n_layers": "four", "n_heads": 0} -> ["n_layers must be an integer, got 'four'",
    "n_heads must be at least 1, got 0"].
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    problems = []
    for name, value in values.items():
        if name not in fields:
            continue
        default = fields[name].default
        optional = "None" in str(fields[name].type)
        if value is None:
            if not optional:
                problems.append(f"{name} must not be null")
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float) or (default is None and "float" in str(fields[name].type)):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            ok = ok and math.isfinite(value)
        elif isinstance(default, str):
            legacy_bool = "bool" in str(fields[name].type) and isinstance(value, bool)  # e.g. DVAEConfig.logits_norm
            ok, kind = isinstance(value, str) or legacy_bool, "text"
        else:
            continue  # tuples, lists and the like: the config checks them itself
        if not ok:
            problems.append(f"{name} must be {kind}{' (finite)' if kind == 'a number' else ''}, got {value!r}")
        elif name in POSITIVE_FIELDS and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    return problems


# ---------------------------------------------------------------------------
# model.safetensors
# ---------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; expected a safetensors file written by this package")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as safetensors ({e}); the file is truncated or corrupt") from e
    return tensors, metadata


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path, hint: str = "") -> None:
    """Raise ``CheckpointError`` unless ``found`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [(k, tuple(found[k].shape), tuple(v.shape)) for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k, got, want in wrong[:5]:
        problems.append(f"tensor {k!r} has shape {got}, expected {want}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the model: " + "; ".join(problems) + (f". {hint}" if hint else ""))


def save_model(model: torch.nn.Module, config: Any, out_dir: str | Path, model_type: str) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/model.safetensors``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out_dir / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"model_type": model_type}))
    save_config(config, out_dir, model_type)
    return out_dir


def export_model(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16,
                 overwrite: bool = False) -> Path:
    """Copy the model folder ``src`` to ``dst`` with its floating-point weights stored as ``dtype``.

    Half precision halves the file (how the course keeps every shipped model
    in ``data/`` small); loading casts the weights back to the model's fp32
    parameters, so nothing else changes but a rounding of each weight (a
    relative error below 1e-3 for float16). Integer tensors are kept as they are;
    the folder's JSON files (``config.json``, a ``training.json``) are copied.
    ``dst`` must be missing or empty unless ``overwrite``; it appears whole
    (``staged_folder``) or not at all.
    """
    src, dst = Path(src), Path(dst)
    if not (src / CONFIG_NAME).is_file():
        raise CheckpointError(f"{src}: no {CONFIG_NAME}; expected a model folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    tensors, metadata = _read_safetensors(src / WEIGHTS_NAME)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the copy would replace its own source; choose another folder")
    with staged_folder(dst, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        for info in sorted(src.glob("*.json")):  # config.json, and what a loop recorded (a training.json)
            (tmp / info.name).write_text(info.read_text())
    return dst


def load_model(
    model_dir: str | Path,
    build: Callable[[C], torch.nn.Module],
    config_cls: type[C],
    model_type: str,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build ``build(config)`` from ``model_dir/config.json`` and load ``model.safetensors`` into it (eval mode)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(
            f"{model_dir}: no such folder; expected a {model_type} checkpoint with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    config = load_config(model_dir, config_cls, model_type)
    model = build(config)
    path = model_dir / WEIGHTS_NAME
    tensors, _ = _read_safetensors(path)
    check_state_dict(model.state_dict(), tensors, path, hint=f"Were these weights saved with this {CONFIG_NAME}?")
    model.load_state_dict(tensors)
    return model.to(device).eval()


# ---------------------------------------------------------------------------
# the training state, for resuming
# ---------------------------------------------------------------------------


def _rng_states() -> dict[str, Any]:
    """Every random generator a run draws from: torch (CPU and each GPU), Python's and NumPy's."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def _set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of tensors' names, dtypes, shapes and bytes, in name order: stored with a training state.

    A bit flipped on disk changes it, so a corrupt state is refused when it is
    loaded instead of training on from garbage.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _state_tensors(model_state: dict[str, torch.Tensor], optim_state: dict) -> dict[str, torch.Tensor]:
    """The tensors a checksum covers: the weights and every tensor of the optimizer's state."""
    tensors = {f"model/{k}": v for k, v in model_state.items()}
    for idx, state in optim_state["state"].items():
        tensors.update({f"optim/{idx}/{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return tensors


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write everything a resumed run needs into one ``torch.save`` file.

    ``{"step", "config", "extra", "model", "optimizer", "rng", "sha256"}``:
    the model's and the optimizer's state dicts, every random generator's
    state, ``extra`` (JSON-like: the total number of steps, ...) and the
    checksum of every tensor (``tensors_sha256``) that loading verifies. Only
    tensors, numbers, strings, lists, tuples and dicts: ``torch.load`` reads
    it back with ``weights_only=True``, which runs no code from the file.
    """
    path = Path(path)
    model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    state = {
        "step": step,
        "config": dataclasses.asdict(config),
        "extra": extra or {},
        "model": model_state,
        "optimizer": optim_state,
        "rng": _rng_states(),
        "sha256": tensors_sha256(_state_tensors(model_state, optim_state)),
    }
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def _read_training_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; expected a training state written by save_training_state")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or corrupt file fails in the unpickler, with many exception types
        raise CheckpointError(f"{path}: cannot read it as a training state ({type(e).__name__}: {e}); "
                              "the file is truncated or corrupt") from e
    missing = [k for k in ("step", "config", "extra", "model", "optimizer", "rng") if k not in state]
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{path}: {missing or 'its content'} missing; expected a training state "
                              "written by save_training_state")
    return state


def load_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: Any,
    restore_rng: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore what ``save_training_state`` wrote into ``model`` and ``optimizer``; returns ``(step, extra)``.

    Refuses (``CheckpointError``) a corrupt file (its checksum), and a state
    saved with another config: resuming it would silently train a different model.
    """
    path = Path(path)
    state = _read_training_state(path)
    if tensors_sha256(_state_tensors(state["model"], state["optimizer"])) != state.get("sha256"):
        raise CheckpointError(f"{path}: the tensors do not match the checksum saved with them; the file is corrupt. "
                              "Delete it to start over (or restore it from a copy)")
    saved, wanted = state["config"], dataclasses.asdict(config)
    diff = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)}
    if diff:
        shown = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path}: was saved with another config ({shown}); resume with the same config or start a new run in another folder"
        )
    check_state_dict(model.state_dict(), state["model"], path)
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this optimizer ({e})") from e
    if restore_rng:
        _set_rng_states(state["rng"])
    return int(state["step"]), state["extra"]


def saved_step(state_path: str | Path) -> int | None:
    """The step recorded in a training-state file, or None when there is none (or it cannot be read)."""
    try:
        return int(_read_training_state(Path(state_path))["step"])
    except (CheckpointError, TypeError, ValueError):
        return None


def start_or_resume(state_path: Path, model: torch.nn.Module, optimizer, config: Any, run_info: dict,
                    resume: bool, log: Callable[[str], None] = print) -> int:
    """The step a training loop starts from: 0 for a new run, the saved step when resuming.

    ``run_info`` holds the settings a resumed run must share with the saved one
    (steps, batch size, seed, ...); a difference is an error that names each
    setting. Without ``resume``, an existing run in the folder is an error too,
    and so, resuming or not, is a finished model without a training state (a
    shipped or exported one): a model is never overwritten by accident.
    """
    state_path = Path(state_path)
    from .distributed import is_main

    if is_main():  # rank 0 alone writes in the folder, so it alone tidies it
        remove_stale_temp_files(state_path.parent)
    if not state_path.exists() and (state_path.parent / WEIGHTS_NAME).exists():
        raise CheckpointError(f"{state_path.parent}: holds a finished model ({WEIGHTS_NAME} without {STATE_NAME}); "
                              "training would replace it. Choose another folder, or pass --overwrite to replace it")
    if resume and state_path.exists():
        step, extra = load_training_state(state_path, model, optimizer, config)
        changed = {k: (extra.get(k), v) for k, v in run_info.items() if extra.get(k) != v}
        if changed:
            shown = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in changed.items())
            raise CheckpointError(f"{state_path}: saved by a run with other settings ({shown}). "
                                  "Resume with the same settings, or use another --out folder.")
        log(f"resumed from {state_path} at step {step}/{run_info.get('steps', '?')}")
        return step
    if resume:
        log(f"no checkpoint in {state_path.parent}: starting from step 0")
    elif state_path.exists():
        raise CheckpointError(f"{state_path}: a run already exists here; pass resume=True (--resume) "
                              "to continue it or choose another folder")
    return 0


# ---------------------------------------------------------------------------
# what a model folder records about its training
# ---------------------------------------------------------------------------

TRAINING_INFO = "training.json"  # how a model folder was trained: which dVAE or tokenizer, steps, seed


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameter names and bytes: two models with equal weights share it."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def codes_hash(dvae: torch.nn.Module) -> str:
    """``weights_hash`` of a dVAE's encoder: its codes depend on nothing else, so a transformer trained on
    them fits any decoder fine-tuned behind that encoder (``train_dvae.finetune_decoder``)."""
    return weights_hash(dvae.encoder)


def training_info(model_dir: str | Path) -> dict:
    """What training recorded about a model folder (``training.json``: steps, seed, the dVAE or tokenizer it used), or {} when absent."""
    path = Path(model_dir) / TRAINING_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_training_info(out_dir: str | Path, info: dict) -> None:
    """Write ``out_dir/training.json`` (atomically), read back by ``training_info``."""
    _write_text(Path(out_dir) / TRAINING_INFO, json.dumps(info, indent=2) + "\n")
