"""The command line as a careless or hostile user meets it: no model overwritten, no outputs mixed or half
written, and every kind of bad input answered with one line and an exit code, never a traceback."""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from dalle_mini_impl import DATA_DIR, REPO_DIR, checkpoints, cli, folder_data, images, pipeline
from dalle_mini_impl.clip import CLIP, CLIPConfig
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
TINY = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)
TINY_CLIP = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)
TINY_DVAE_SET = ["--set", "enc_width=8", "--set", "dec_width=8", "--set", "codebook_dim=16", "--set", "vocab_size=32"]
PROMPT = "a large red circle in the top left"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A folder laid out like data/, holding tiny untrained models (the wiring is under test, not the images)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    (root / "tokenizer").mkdir()
    shutil.copy(DATA_DIR / "tokenizer" / "bpe.json", root / "tokenizer" / "bpe.json")
    vocab = load_tokenizer().vocab_size
    dvae_config, config = DVAEConfig(**TINY_DVAE), TransformerConfig(text_vocab_size=vocab, **TINY)
    checkpoints.save_model(DVAE(dvae_config), dvae_config, root / "dvae", "dvae")
    checkpoints.save_model(DalleTransformer(config), config, root / "transformer", "transformer")
    return root


def generate(models_dir, out, *extra):
    return cli.main(["generate", PROMPT, "--candidates", "2", "--keep", "2", "--out", str(out),
                     "--models", str(models_dir), *extra])


def listed_and_present(out):
    """The image names results.json lists, and the PNGs in the folder (contact sheets aside)."""
    listed = {name for entry in json.loads((out / "results.json").read_text())["results"] for name in entry["images"]}
    present = {p.name for p in out.glob("*.png") if not p.name.endswith("_sheet.png")}
    return listed, present


def png(path, array):
    Image.fromarray(array).save(path)
    return path


def fingerprint(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- data loss: a finished model is never overwritten -------------------------------------------


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_train_clip_refuses_a_copy_of_a_shipped_model(tmp_path, capsys, resume):
    copy = tmp_path / "clip"
    shutil.copytree(DATA_DIR / "clip", copy)
    before = fingerprint(copy)
    argv = ["train-clip", "--steps", "2", "--batch-size", "4", "--threads", "1", "--out", str(copy)]
    assert cli.main(argv + (["--resume"] if resume else [])) == 2
    err = capsys.readouterr().err
    assert str(copy) in err and "--overwrite" in err and "Traceback" not in err
    assert fingerprint(copy) == before


def test_train_dvae_overwrites_a_finished_model_only_when_told(tmp_path, capsys, monkeypatch):
    copy = tmp_path / "dvae"
    shutil.copytree(DATA_DIR / "dvae", copy)
    before = fingerprint(copy)
    argv = ["train-dvae", "--steps", "1", "--batch-size", "4", "--images", "8", "--threads", "1",
            "--out", str(copy), *TINY_DVAE_SET]
    assert cli.main(argv) == 2 and fingerprint(copy) == before
    assert "--overwrite" in capsys.readouterr().err
    monkeypatch.setattr("dalle_mini_impl.evaluate.evaluate_reconstructions", lambda *a, **k: {})
    monkeypatch.setattr("dalle_mini_impl.evaluate.format_reconstruction_report", lambda report: "")
    assert cli.main(argv + ["--overwrite"]) == 0
    assert (copy / checkpoints.STATE_NAME).exists() and fingerprint(copy)["model.safetensors"] != before["model.safetensors"]
    assert fingerprint(DATA_DIR / "dvae")["model.safetensors"] == before["model.safetensors"]  # the shipped one
    assert not (tmp_path / "dvae.replaced").exists()  # set aside while training, dropped once it finished


def test_an_overwrite_that_fails_keeps_the_old_model_aside(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "clip"
    shutil.copytree(DATA_DIR / "clip", copy)
    (copy / "notes.txt").write_text("mine")  # not a run file: never touched
    before = fingerprint(DATA_DIR / "clip")
    monkeypatch.setattr("dalle_mini_impl.train_clip.train_clip", fake_training(tmp_path, KeyboardInterrupt()))
    code = cli.main(["train-clip", "--out", str(copy), "--threads", "1", "--overwrite"])
    assert code == 130
    err = capsys.readouterr().err
    aside = tmp_path / "clip.replaced"
    assert f"kept in {aside}" in err and "step 3" in err
    assert fingerprint(aside) == {k: v for k, v in before.items() if k != "README.md"}  # the model's own files
    assert (copy / "notes.txt").read_text() == "mine" and (copy / "README.md").exists()


def test_train_all_overwrite_sets_the_whole_run_aside_until_it_finishes(tmp_path, monkeypatch, capsys):
    def fake_train_all(out_dir, **_):
        assert not out_dir.exists() or not any(out_dir.iterdir())  # it starts from an empty folder
        if out_dir.name == "failing":
            raise checkpoints.CheckpointError("stopped")

    monkeypatch.setattr("dalle_mini_impl.train_all.train_all", fake_train_all)
    for name, code in (("finishing", 0), ("failing", 2)):
        out = tmp_path / name
        out.mkdir()
        (out / "run.json").write_text("{}")  # a run started with other settings
        assert cli.main(["train-all", "--out", str(out), "--overwrite"]) == code
    assert not (tmp_path / "finishing.replaced").exists()  # dropped once the new run finished
    assert (tmp_path / "failing.replaced" / "run.json").read_text() == "{}"  # kept: the new run did not finish
    assert f"kept in {tmp_path / 'failing.replaced'}" in capsys.readouterr().err


def test_train_tokenizer_refuses_to_replace_a_tokenizer(tmp_path, capsys):
    copy = tmp_path / "tokenizer"
    shutil.copytree(DATA_DIR / "tokenizer", copy)
    before = fingerprint(copy)
    assert cli.main(["train-tokenizer", "--captions", "20", "--vocab-size", "270", "--out", str(copy)]) == 2
    assert "--overwrite" in capsys.readouterr().err and fingerprint(copy) == before
    assert cli.main(["train-tokenizer", "--captions", "20", "--vocab-size", "270", "--out", str(copy),
                     "--overwrite"]) == 0
    assert fingerprint(copy) != before


def test_export_refuses_a_non_empty_folder_and_a_file(tmp_path, capsys):
    dst = tmp_path / "dst"
    assert cli.main(["export", str(DATA_DIR / "clip"), str(dst)]) == 0
    before = fingerprint(dst)
    (tmp_path / "file").write_text("x")
    assert cli.main(["export", str(DATA_DIR / "clip"), str(dst), "--dtype", "float32"]) == 2
    assert cli.main(["export", str(DATA_DIR / "clip"), str(tmp_path / "file")]) == 2
    assert "Traceback" not in capsys.readouterr().err and fingerprint(dst) == before
    assert cli.main(["export", str(DATA_DIR / "clip"), str(dst), "--dtype", "float32", "--overwrite"]) == 0
    assert fingerprint(dst)["model.safetensors"] != before["model.safetensors"]


# --- data loss: outputs never mix, collide or appear half-written -------------------------------


def test_generate_into_a_used_folder_refuses_or_replaces_whole(models_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate(models_dir, out) == 0
    first = fingerprint(out)
    assert generate(models_dir, out, "--seed", "1") == 2  # refused: the first run's files are untouched
    assert "--overwrite" in capsys.readouterr().err and fingerprint(out) == first
    (out / "00_stray_9.png").write_bytes(b"")
    assert generate(models_dir, out, "--seed", "1", "--overwrite") == 0
    listed, present = listed_and_present(out)
    assert listed == present and "00_stray_9.png" not in present  # nothing of the old folder is left
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_two_generate_runs_on_one_folder_never_mix(models_dir, tmp_path):
    """Started together: whatever the timing, one run wins, the other says so, and the folder is one run's."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_DIR)}
    argv = [sys.executable, "-m", "dalle_mini_impl.cli", "generate", PROMPT, "--candidates", "2", "--keep", "2",
            "--out", str(out), "--models", str(models_dir)]
    runs = [subprocess.Popen(argv + ["--seed", str(seed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for seed in (0, 1)]
    codes = sorted(run.wait() for run in runs)
    errors = [run.stderr.read().decode() for run in runs]
    assert codes == [0, 2] and not any("Traceback" in e for e in errors), errors
    listed, present = listed_and_present(out)
    assert listed == present and len(present) == 2


def test_staged_folders_finishing_in_turn_never_mix(tmp_path):
    """Two runs start on an empty --out; the first to finish takes it, the second is told and keeps its files."""
    out = tmp_path / "out"
    first_run, second_run = checkpoints.staged_folder(out), checkpoints.staged_folder(out)
    first, second = first_run.__enter__(), second_run.__enter__()
    (first / "a.png").write_text("a")
    (second / "b.png").write_text("b")
    first_run.__exit__(None, None, None)
    with pytest.raises(checkpoints.CheckpointError, match="filled by another run") as err:
        second_run.__exit__(None, None, None)
    assert str(second) in str(err.value) and (second / "b.png").read_text() == "b"
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_generate_on_a_full_disk_leaves_nothing(models_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = []

    def write_png(image, path):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"")  # what a full disk leaves: an empty file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        Image.fromarray(image).save(path)

    monkeypatch.setattr(images, "save_png", write_png)
    assert generate(models_dir, out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())  # no folder, no 0-byte PNG, no temporary folder


def test_render_captions_that_share_a_file_name_get_two_files(tmp_path):
    a = "a small green square to the left of a large purple cross"
    b = "a small green square to the left of a large purple circle"
    assert cli._slug(a) == cli._slug(b)  # the first 48 characters agree
    assert cli.main(["render", a, b, "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_reconstruct_two_images_of_one_name_gives_two_files(models_dir, tmp_path):
    for sub, value in (("a", 0), ("b", 255)):
        (tmp_path / sub).mkdir()
        png(tmp_path / sub / "x.png", np.full((64, 64, 3), value, np.uint8))
    out = tmp_path / "out"
    assert cli.main(["reconstruct", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                     "--model", str(models_dir / "dvae"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "x_2.png"]


def test_evaluate_refuses_to_replace_a_report(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--prompts", "1", "--candidates", "1", "--keep", "1", "--out", str(report)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err and report.read_text() == "{}"


# --- data loss: resuming after a torn log or a corrupt state ------------------------------------


@pytest.fixture
def clip_run(tmp_path, monkeypatch):
    """A 2-step train-clip run (the cpu preset, 4 pairs a step); the final evaluation is skipped."""
    monkeypatch.setattr("dalle_mini_impl.evaluate.evaluate_clip", lambda *a, **k: {})
    monkeypatch.setattr("dalle_mini_impl.evaluate.format_clip_report", lambda report: "")
    out = tmp_path / "clip"
    argv = ["train-clip", "--batch-size", "4", "--threads", "1", "--out", str(out)]
    assert cli.main(argv + ["--steps", "2"]) == 0
    return out, argv


def test_resume_drops_a_torn_last_metrics_line(clip_run, capsys):
    out, argv = clip_run
    metrics = out / "metrics.jsonl"
    rows = metrics.read_text()
    metrics.write_text(rows + '{"step": 3, "lo')  # killed while appending a row
    assert cli.main(argv + ["--steps", "2", "--resume"]) == 0
    assert metrics.read_text() == rows
    metrics.write_text('{"step": 1, "lo\n' + rows)  # torn in the middle: not a kill; say which file and line
    assert cli.main(argv + ["--steps", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(metrics) in err and "line 1" in err


def test_resume_refuses_a_corrupt_training_state(clip_run, capsys):
    out, argv = clip_run
    state = out / checkpoints.STATE_NAME
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of a tensor (the middle of the file), flipped on disk
    state.write_bytes(bytes(data))
    assert cli.main(argv + ["--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(state) in err and "checksum" in err and "corrupt" in err


def test_a_clip_records_its_tokenizer_and_generate_checks_it(clip_run, models_dir, tmp_path, capsys):
    from dalle_mini_impl.bpe import tokenizer_hash

    out, _ = clip_run
    assert json.loads((out / "training.json").read_text())["tokenizer_sha256"] == tokenizer_hash(load_tokenizer())
    other = tmp_path / "models"
    shutil.copytree(models_dir, other)
    config = CLIPConfig(text_vocab_size=load_tokenizer().vocab_size, **TINY_CLIP)
    checkpoints.save_model(CLIP(config), config, other / "clip", "clip")
    (other / "clip" / "training.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    assert generate(other, tmp_path / "out") == 2
    assert "another tokenizer" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --- Ctrl-C and a full disk while training ------------------------------------------------------


def fake_training(tmp_path, error):
    """A train_clip that saves a checkpoint at step 3, then meets ``error``."""

    def train_clip(config, out_dir, **_):
        model = CLIP(CLIPConfig(**TINY_CLIP))
        optimizer = torch.optim.AdamW(model.parameters())
        checkpoints.save_training_state(out_dir / checkpoints.STATE_NAME, model, optimizer, 3, config)
        raise error

    return train_clip


def test_ctrl_c_while_training_says_where_to_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dalle_mini_impl.train_clip.train_clip", fake_training(tmp_path, KeyboardInterrupt()))
    out = tmp_path / "clip"
    try:
        code = cli.main(["train-clip", "--out", str(out), "--threads", "1"])
    except KeyboardInterrupt:  # (escaping, it would also stop pytest itself)
        code = "a traceback"
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "step 3" in err and "--resume" in err and "Traceback" not in err


def test_a_full_disk_while_training_is_one_line(tmp_path, monkeypatch, capsys):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "clip" / "model.safetensors"))
    monkeypatch.setattr("dalle_mini_impl.train_clip.train_clip", fake_training(tmp_path, full))
    assert cli.main(["train-clip", "--out", str(tmp_path / "clip"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "model.safetensors" in err and "step 3" in err


@pytest.mark.parametrize("writer, error, file, then", [
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6290048 vs 6289936"),
     "train_state.pt", "no checkpoint was saved yet"),  # the training state is written first
    ("dalle_mini_impl.checkpoints.save_file",
     SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"), "model.safetensors",
     "is at step 2: resume with the same command and --resume"),
], ids=["torch.save", "safetensors"])
def test_a_full_disk_in_the_real_writers_is_one_line(writer, error, file, then, tmp_path, monkeypatch, capsys):
    """torch.save and safetensors do not raise OSError when the disk fills: their errors are named and kept short."""
    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(writer, full)
    out = tmp_path / "dvae"
    argv = ["train-dvae", *TINY_DVAE_SET, "--steps", "2", "--batch-size", "4", "--images", "8", "--threads", "1",
            "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # (the progress bar's lines come before it)
    assert "Traceback" not in err and line.startswith(f"error: {out / file}: could not be written ("), err
    assert "MB free on its disk" in line and line.endswith(then)
    assert str(error).splitlines()[0][:30] in line
    assert sorted(p.name for p in out.glob(".*.tmp")) == []  # no half-written file left behind


def test_many_candidates_are_drawn_in_batches_with_a_progress_bar(models_dir, tmp_path, capsys):
    n = 2 * pipeline.SAMPLE_BATCH + 2  # three batches
    assert cli.main(["generate", PROMPT, "--candidates", str(n), "--keep", "1", "--no-clip", "--out",
                     str(tmp_path / "out"), "--models", str(models_dir)]) == 0
    assert "sampling" not in capsys.readouterr().err  # without CLIP only the first batch is drawn: no bar
    clip_dir = tmp_path / "with_clip"
    shutil.copytree(models_dir, clip_dir)
    config = CLIPConfig(text_vocab_size=load_tokenizer().vocab_size, **TINY_CLIP)
    checkpoints.save_model(CLIP(config), config, clip_dir / "clip", "clip")
    assert cli.main(["generate", PROMPT, "--candidates", str(n), "--keep", "1", "--out", str(tmp_path / "out2"),
                     "--models", str(clip_dir)]) == 0
    assert "sampling" in (err := capsys.readouterr().err) and "3/3" in err, err


# --- ordinary bad input: one line, exit 2 -------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["generate", "a red \udcff circle", "--out", "{out}", "--models", "{models}"],
    ["tokenize", "a red \udcff circle"],
    ["demo", "a red \udcff circle", "--out", "{out}"],
], ids=["generate", "tokenize", "demo"])
def test_invalid_utf8_text_is_a_usage_error(argv, models_dir, tmp_path, capsys):
    """Python hands bytes that are not UTF-8 (``$'\\xff'`` in a shell) to the program as lone surrogates."""
    argv = [a.format(out=tmp_path / "out", models=models_dir) for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and "not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [
    ["--cond-scale", "nan"], ["--cond-scale", "inf"], ["--cond-scale", "1e300"], ["--temperature", "1e-320"],
    ["--seed", str(2**64)], ["--seed", str(2**32)], ["--seed", "-1"],
], ids=["cond-nan", "cond-inf", "cond-1e300", "temperature-denormal", "seed-2^64", "seed-2^32", "seed-negative"])
def test_generate_refuses_unusable_numbers_before_loading(flag, models_dir, tmp_path, capsys, monkeypatch):
    def load_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_models", load_models)
    with pytest.raises(SystemExit) as exc:
        generate(models_dir, tmp_path / "out", *flag)
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["evaluate", "--seed", str(2**64)], ["render", "a red circle", "--seed", "-1"],
    ["train-clip", "--seed", str(2**32)], ["demo", "--seed", "-1"],
], ids=["evaluate", "render", "train-clip", "demo"])
def test_one_seed_rule_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "render", "reconstruct", "evaluate"])
def test_an_unwritable_out_is_refused_before_any_work(command, models_dir, tmp_path, capsys):
    image = png(tmp_path / "x.png", np.zeros((64, 64, 3), np.uint8))
    argv = {"generate": ["generate", PROMPT, "--models", str(models_dir), "--out", "/proc/x"],
            "render": ["render", PROMPT, "--out", "/proc/x"],
            "reconstruct": ["reconstruct", str(image), "--model", str(models_dir / "dvae"), "--out", "/proc/x"],
            "evaluate": ["evaluate", "--models", str(models_dir), "--prompts", "1", "--out", "/proc/x/r.json"]}[command]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "/proc/x" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["render", "reconstruct"])
def test_an_out_that_is_a_file_is_refused(command, models_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    image = png(tmp_path / "x.png", np.zeros((64, 64, 3), np.uint8))
    argv = {"render": ["render", PROMPT, "--out", str(blocker)],
            "reconstruct": ["reconstruct", str(image), "--model", str(models_dir / "dvae"), "--out", str(blocker)]}
    assert cli.main(argv[command]) == 2
    assert "not a folder" in capsys.readouterr().err and blocker.read_text() == "keep me"


def huge_png_header(path, width=20_000, height=10_000):
    """A PNG whose header says width × height (8-bit RGB): what a decompression bomb looks like before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def test_grade_and_reconstruct_refuse_what_is_not_an_image_or_too_big(models_dir, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = huge_png_header(tmp_path / "bomb.png")
    for path in (text, bomb):
        assert cli.main(["grade", str(path), PROMPT]) == 2
        assert cli.main(["reconstruct", str(path), "--model", str(models_dir / "dvae"),
                         "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err
    assert "pixels are refused" in err and not (tmp_path / "out").exists()


def test_grade_exit_codes_tell_no_match_from_cannot_grade(tmp_path):
    from dalle_mini_impl import shapes

    image = png(tmp_path / "x.png", shapes.render(shapes.scene_for_caption(PROMPT, np.random.default_rng(0))))
    assert cli.main(["grade", str(image), PROMPT]) == 0
    assert cli.main(["grade", str(image), "a small blue cross at the bottom"]) == cli.GRADE_NO_MATCH == 1
    assert cli.main(["grade", str(image), "a photo of a cat"]) == cli.GRADE_CANNOT == 3


def test_a_16_bit_png_is_read_at_its_brightness_not_as_white(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path)
    image = cli._read_image(path)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and (image == round(40000 / 257)).all()


def broken_copy(models_dir, tmp_path, edit):
    other = tmp_path / "models"
    shutil.copytree(models_dir, other)
    edit(other)
    return other


def set_config(folder, **fields):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("case", ["n_layers-four", "n_heads-0", "bpe-garbage", "bpe-truncated"])
def test_broken_model_folders_name_the_file_and_the_field(case, models_dir, tmp_path, capsys):
    edits = {
        "n_layers-four": (lambda m: set_config(m / "transformer", n_layers="four"), "config.json", "n_layers"),
        "n_heads-0": (lambda m: set_config(m / "transformer", n_heads=0), "config.json", "n_heads"),
        "bpe-garbage": (lambda m: (m / "tokenizer" / "bpe.json").write_bytes(os.urandom(64)), "bpe.json", ""),
        "bpe-truncated": (lambda m: (m / "tokenizer" / "bpe.json").write_text(
            (DATA_DIR / "tokenizer" / "bpe.json").read_text()[:500]), "bpe.json", ""),
    }
    edit, file, field = edits[case]
    other = broken_copy(models_dir, tmp_path, edit)
    assert generate(other, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert file in err and field in err and "Traceback" not in err
    assert err.count("Create it with") <= 1


def test_a_missing_tokenizer_file_is_named_once(tmp_path, capsys):
    assert cli.main(["tokenize", "--tokenizer", str(tmp_path / "missing.json"), "a red circle"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert cli.main(["generate", PROMPT, "--out", str(tmp_path / "out"), "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bpe.json" in err and err.count("Create it with") == 1


@pytest.mark.parametrize("setting", ["vocab_size=0", "enc_width=0", "image_size=-64", "hard=maybe"])
def test_train_dvae_set_is_checked_before_training(setting, tmp_path, capsys):
    out = tmp_path / "dvae"
    argv = ["train-dvae", "--steps", "1", "--batch-size", "4", "--images", "8", "--threads", "1",
            "--out", str(out), *TINY_DVAE_SET, "--set", setting]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert setting.split("=")[0] in err and "Traceback" not in err and not (out / "model.safetensors").exists()


def test_candidates_are_sampled_in_batches(models_dir, monkeypatch):
    """N = 100000 would need 19.7 GB at once with the shipped models: never more than SAMPLE_BATCH at a time."""
    sizes = []
    real = pipeline.sample_images

    def spy(transformer, dvae, text, **kwargs):
        sizes.append(len(text))
        return real(transformer, dvae, text, **kwargs)

    monkeypatch.setattr(pipeline, "sample_images", spy)
    models = pipeline.load_models(models_dir, device="cpu", clip=False)

    def brightness(model, tokenizer, prompt, images):  # a stand-in CLIP: brighter is better
        scores = images.reshape(len(images), -1).mean(axis=1).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        return images[order], scores[order]

    monkeypatch.setattr("dalle_mini_impl.clip.rerank", brightness)
    n = 2 * pipeline.SAMPLE_BATCH + 5
    (result,) = pipeline.generate(PROMPT, models.transformer, models.dvae, models.tokenizer, candidates=n, keep=3,
                                  clip_model=torch.nn.Identity(), device="cpu")
    assert sizes == [pipeline.SAMPLE_BATCH, pipeline.SAMPLE_BATCH, 5]
    assert len(result.images) == 3 and list(result.scores) == sorted(result.scores, reverse=True)
    sizes.clear()  # without CLIP: the first K, and no more batches than they need
    (plain,) = pipeline.generate(PROMPT, models.transformer, models.dvae, models.tokenizer, candidates=n, keep=3,
                                 device="cpu")
    assert sizes == [pipeline.SAMPLE_BATCH] and plain.scores is None and len(plain.images) == 3


def test_a_byte_order_mark_is_not_part_of_a_caption(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("\ufeffa red circle\nthe same\n".encode("utf-8"))
    assert folder_data.read_captions(path) == ["a red circle", "the same"]


def test_load_config_checks_types_and_sizes(tmp_path):
    config = TransformerConfig(**TINY)
    checkpoints.save_config(config, tmp_path, "transformer")
    set_config(tmp_path, dropout="high", grid=-8)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load_config(tmp_path, TransformerConfig, "transformer")
    assert "dropout must be a number" in str(err.value) and "grid must be at least 1" in str(err.value)


def test_train_dvae_saves_reconstructions_every_sample_every_steps(tmp_path, monkeypatch):
    monkeypatch.setattr("dalle_mini_impl.evaluate.evaluate_reconstructions", lambda *a, **k: {})
    monkeypatch.setattr("dalle_mini_impl.evaluate.format_reconstruction_report", lambda report: "")
    out = tmp_path / "dvae"
    assert cli.main(["train-dvae", *TINY_DVAE_SET, "--steps", "4", "--batch-size", "4", "--images", "8",
                     "--threads", "1", "--sample-every", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert np.asarray(Image.open(out / "samples" / "step_000002.png")).shape == (128, 512, 3)  # originals above
