"""Never lose work, never crash unexplained: SIGKILL and resume, bad command lines, any prompt, broken checkpoints,
a NaN loss stopping train-all."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _tiny import TINY_PLAN, write_image_folder
from safetensors.torch import load_file

from dalle_mini_impl import DATA_DIR, REPO_DIR, checkpoints, cli, grader, pipeline
from dalle_mini_impl import train_transformer as tt
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.train_all import STAGES, open_run, stage_finished, train_all
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), n=24)


# --- a real SIGKILL, twice, then resume ---------------------------------------------------------

# long enough that both kills land mid-run: each stage saves 6 times
KILL_PLAN = dataclasses.replace(TINY_PLAN, dvae_steps=12, transformer_steps=12, clip_steps=12, checkpoint_every=2)
CHILD = """
import json, sys
from dalle_mini_impl.train_all import RunPlan, train_all
out, data, cache, plan = sys.argv[1:5]
train_all(out, data=data, plan=RunPlan(**json.loads(plan)), precision="fp32", cache_dir=cache, progress=False)
"""


def _start(out, images, cache) -> subprocess.Popen:
    """train_all in a fresh child process: every run the test compares starts from the same process state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_DIR)}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(images), str(cache),
                             json.dumps(dataclasses.asdict(KILL_PLAN))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _start_and_kill(out, images, cache, when_exists, timeout=120.0):
    """Start train_all in a child process and SIGKILL it as soon as ``when_exists`` appears."""
    child = _start(out, images, cache)
    deadline = time.time() + timeout
    while not when_exists.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, f"the child ended on its own ({child.returncode}): {err.decode()[-2000:]}"


def test_a_real_ctrl_c_while_training_exits_130_with_the_resume_hint_and_no_traceback(tmp_path):
    """SIGINT to a real `dalle-mini-impl train-clip` process, as a terminal's Ctrl-C sends it."""
    out = tmp_path / "clip"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_DIR)}
    child = subprocess.Popen([sys.executable, "-m", "dalle_mini_impl.cli", "train-clip", "--steps", "100000",
                              "--batch-size", "4", "--threads", "1", "--out", str(out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             # as a terminal starts it: SIGINT at its default, even when this test runs in a
                             # background job (which starts with SIGINT ignored, and children inherit that)
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # until the loop has taken its first steps
    assert child.poll() is None, f"the child ended on its own: {child.communicate()[1].decode()[-2000:]}"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    err = err.decode()
    assert child.returncode == 130, err[-2000:]
    assert "interrupted; " in err and "Traceback" not in err, err[-2000:]
    if "no checkpoint was saved yet" not in err:  # (a slow machine may be stopped before the first save)
        assert "resume with the same command and --resume" in err, err[-2000:]
        assert (out / checkpoints.STATE_NAME).exists()  # what --resume continues from


def test_a_run_killed_twice_with_sigkill_resumes_to_the_same_weights(images, tmp_path):
    out, cache = tmp_path / "killed", tmp_path / "cache"
    # first kill: as soon as the dVAE has saved once; second: as soon as the transformer has
    _start_and_kill(out, images, cache, when_exists=out / "dvae" / checkpoints.STATE_NAME)
    run = open_run(out, images, KILL_PLAN, progress=False, log=lambda _: None)
    assert not stage_finished(run, "clip")  # (on an idle machine: dVAE at step 2 of 12)
    _start_and_kill(out, images, cache, when_exists=out / "transformer" / checkpoints.STATE_NAME)
    assert stage_finished(run, "dvae") and not stage_finished(run, "clip")  # (idle: transformer at step 2 of 12)

    messages = []
    resumed = train_all(out, data=images, plan=KILL_PLAN, precision="fp32", cache_dir=cache, progress=False,
                        log=messages.append)
    assert resumed["tokenizer"] == resumed["dvae"] == 0.0  # finished before the second kill: skipped
    assert any("resumed from" in m for m in messages)
    assert not list(out.rglob(".*.tmp"))  # whatever a kill left half-written is gone

    # the uninterrupted run, in a fresh process like the killed ones (a test process that has run other
    # tests may pick other CPU kernels, whose rounding differs in the last bits)
    straight = tmp_path / "straight"
    child = _start(straight, images, cache)
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err.decode()[-2000:]
    assert (out / "tokenizer" / "bpe.json").read_text() == (straight / "tokenizer" / "bpe.json").read_text()
    for stage in ("dvae", "transformer", "clip"):
        a, b = (load_file(str(d / stage / checkpoints.WEIGHTS_NAME)) for d in (out, straight))
        assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == [], stage  # exactly equal


# --- bad command lines: exit 2, nothing written ----------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["train-all", "--preset", "tiny"], "invalid choice: 'tiny'"),
    (["train-all", "--threads", "0"], "must be at least 1"),
    (["train-all", "--seed", "-1"], "--seed: must be from 0 to 4294967295"),
    (["train-all", "--data", "{tmp}/missing"], "is not a folder"),
    (["train-all", "--data", "{tmp}/empty"], "no usable image with a caption"),
    (["train-all", "--out", "{tmp}/a_file/run"], "is a file"),
    (["train-dvae", "--steps", "-5"], "must be at least 1"),
    (["train-clip", "--batch-size", "0"], "must be at least 1"),
    (["train-transformer", "--out", "{tmp}/a_file/run"], "is a file"),
    (["generate", "a red circle", "--candidates", "-3"], "must be at least 1"),
    (["generate", "a red circle", "--candidates", "2", "--keep", "3"], "cannot exceed"),
    (["evaluate", "--prompts", "-1"], "must be at least 1"),
], ids=["unknown-preset", "threads", "seed", "data-missing", "data-empty", "out-unwritable", "dvae-steps",
        "clip-batch", "transformer-out", "negative-N", "K-above-N", "evaluate-prompts"])
def test_bad_arguments_exit_2_with_a_usage_error_and_write_nothing(argv, says, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage:" in err and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty"]  # nothing half-written


# --- prompts: any text works, the grader says when it cannot grade ------------------------------------

PROMPTS = ["🐱 a cat in a box", "猫が箱の中にいる", "قطة في صندوق", "e\u0301te\u0301 — naïve café", "a red circle\tand\nmore"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(DATA_DIR / "tokenizer", root / "tokenizer")
    torch.manual_seed(0)
    dvae_config = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
    config = TransformerConfig(text_vocab_size=load_tokenizer().vocab_size, image_vocab_size=32, text_len=32,
                               grid=8, d_model=32, n_heads=4, n_layers=2)
    checkpoints.save_model(DVAE(dvae_config), dvae_config, root / "dvae", "dvae")
    checkpoints.save_model(DalleTransformer(config), config, root / "transformer", "transformer")
    return root


def test_any_unicode_prompt_generates(models_dir):
    models = pipeline.load_models(models_dir, device="cpu")
    for prompt in PROMPTS:
        assert models.tokenizer.decode(models.tokenizer.encode(prompt)) == prompt  # byte-level: nothing is lost
    results = pipeline.generate(PROMPTS, models.transformer, models.dvae, models.tokenizer, candidates=2, keep=1)
    assert [r.prompt for r in results] == PROMPTS and all(r.images.shape == (1, 64, 64, 3) for r in results)
    grade = grader.grade(results[0].images[0], PROMPTS[0])
    assert not grade.gradable and "grammar" in grade.reason.lower()


def test_cli_draws_a_prompt_outside_the_grammar_and_says_it_cannot_grade_it(models_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["generate", PROMPTS[1], "a red circle", "--models", str(models_dir), "--candidates", "2",
                     "--keep", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not gradable (outside the Shapes grammar)" in printed and "match the prompt" in printed
    assert len(json.loads((out / "results.json").read_text())["results"]) == 2


def test_cli_truncates_an_overlong_prompt_with_a_warning(models_dir, tmp_path):
    with pytest.warns(UserWarning, match="truncated"):
        assert cli.main(["generate", "a large red circle " * 12, "--models", str(models_dir), "--candidates", "1",
                         "--keep", "1", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "results.json").is_file()


# --- checkpoints: safetensors only; broken ones are named ------------------------------------------


def test_a_pickle_is_never_loaded(tmp_path):
    config = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
    checkpoints.save_model(DVAE(config), config, tmp_path, "dvae")
    torch.save(DVAE(config).state_dict(), tmp_path / checkpoints.WEIGHTS_NAME)  # a pickle under the expected name
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.safetensors: cannot read it as safetensors"):
        checkpoints.load_model(tmp_path, DVAE, DVAEConfig, "dvae")


def test_a_truncated_training_state_is_named_on_resume(images, tmp_path):
    train_all(tmp_path, data=images, plan=TINY_PLAN, stages=("tokenizer", "dvae"), precision="fp32",
              progress=False, log=lambda _: None)
    state = tmp_path / "dvae" / checkpoints.STATE_NAME
    state.write_bytes(state.read_bytes()[:300])
    shutil.rmtree(tmp_path / "dvae" / "samples")
    with pytest.raises(checkpoints.CheckpointError, match=r"dvae/train_state\.pt: cannot read it as "
                                                          r"a training state.*truncated or corrupt"):
        train_all(tmp_path, data=images, plan=TINY_PLAN, stages=("tokenizer", "dvae"), precision="fp32",
                  progress=False, log=lambda _: None)


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")
    (tmp_path / "keep.txt").write_text("not ours")
    assert [p.name for p in checkpoints.remove_stale_temp_files(tmp_path)] == [".model.safetensors.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# --- a NaN loss stops train-all with a message and keeps the last good checkpoint ---------------------


def test_train_all_cli_stops_on_a_nan_loss_and_resumes_afterwards(images, tmp_path, monkeypatch, capsys):
    from dalle_mini_impl import train_all as ta

    monkeypatch.setitem(ta.PLANS, "cpu", TINY_PLAN)  # the command line's plan, made tiny
    monkeypatch.setattr(tt, "CACHE_DIR", tmp_path / "cache")  # keep the repository's .cache/ out of tests
    real_loss, calls = DalleTransformer.loss, {"n": 0}

    def nan_at_step_3(self, text, codes):
        calls["n"] += 1
        out = real_loss(self, text, codes)
        if calls["n"] == 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DalleTransformer, "loss", nan_at_step_3)
    argv = ["train-all", "--data", str(images), "--out", str(tmp_path / "run"), "--precision", "fp32"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: loss is nan at step 3" in err and "last good checkpoint" in err and "(step 2)" in err
    assert checkpoints.saved_step(tmp_path / "run" / "transformer" / checkpoints.STATE_NAME) == 2
    weights = load_file(str(tmp_path / "run" / "transformer" / checkpoints.WEIGHTS_NAME))
    assert all(torch.isfinite(w).all() for w in weights.values())

    monkeypatch.setattr(DalleTransformer, "loss", real_loss)
    assert cli.main(argv) == 0
    run = open_run(tmp_path / "run", images, TINY_PLAN, progress=False, log=lambda _: None)
    assert all(stage_finished(run, stage) for stage in STAGES)
    assert np.isfinite(json.loads((tmp_path / "run" / "run.json").read_text())["seconds"]["transformer"])
