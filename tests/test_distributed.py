"""torchrun: 2 CPU processes (gloo) train in lock-step and match one process with the same global batch; in one
process every helper is a no-op."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import TINY_PLAN, write_image_folder
from safetensors.torch import load_file

from dalle_mini_impl import REPO_DIR, distributed, train_all

WORKER = Path(__file__).parent / "_ddp_worker.py"
TOLERANCE = 1e-5  # measured: 1.2e-7 (transformer) and 1.8e-6 (CLIP) after 6 steps; float sums in another order


# --- one process: nothing changes ---------------------------------------------------------


def test_outside_torchrun_every_helper_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_by_torchrun() and not distributed.enabled()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.setup("cpu") == "cpu" and not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model) is model and distributed.wrap(model, method="forward") == model.forward
    x = torch.arange(6.0)
    assert distributed.shard(x) is x and distributed.all_sum(x) is x and distributed.all_gather(x) is x
    assert distributed.gather_with_grad(x) is x and distributed.per_rank_batch(6) == 6
    assert distributed.all_finite(torch.tensor(1.0)) and not distributed.all_finite(torch.tensor(float("nan")))
    distributed.barrier(), distributed.broadcast_buffers(model), distributed.cleanup()  # nothing to wait for


def test_shards_split_the_global_batch_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "enabled", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    batch = list(range(8))
    shards = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(distributed.shard(batch))
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7]] and distributed.per_rank_batch(64) == 32
    with pytest.raises(ValueError, match="batch size 9 does not split evenly over 2 processes; use a multiple of 2"):
        distributed.per_rank_batch(9)


# --- two processes under torchrun -------------------------------------------------------------


def test_two_gloo_processes_train_in_lock_step_and_match_one_process(tmp_path):
    data = write_image_folder(tmp_path / "images", n=24)
    run, out = tmp_path / "ddp_run", tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_DIR)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(data), str(run), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["backend"] == "gloo" and i["per_rank_batch"] == 4 for i in infos)

    # lock-step: both ranks end with exactly the same weights (and buffers), stage by stage
    rank0, rank1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and {k.split("/")[0] for k in rank0} == {"dvae", "transformer", "clip"}
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    # rank 0 alone wrote the run folder, and what it saved is what it trained
    saved = {f"{s}/{k}": v for s in ("dvae", "transformer", "clip")
             for k, v in load_file(str(run / s / "model.safetensors")).items()}
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)

    # one process, batch 8 on the same tokenizer and dVAE: the transformer and CLIP match the 2 × 4 run
    single = tmp_path / "single_run"
    single.mkdir()
    for name in ("tokenizer", "dvae"):
        shutil.copytree(run / name, single / name)
    shutil.copy(run / "run.json", single / "run.json")
    seconds = train_all.train_all(single, data=data, plan=TINY_PLAN, precision="fp32", cache_dir=tmp_path / "cache",
                                  progress=False, log=lambda _: None)
    assert seconds["tokenizer"] == seconds["dvae"] == 0.0  # reused, not retrained
    for stage in ("transformer", "clip"):
        one = load_file(str(single / stage / "model.safetensors"))
        worst = max((one[k] - rank0[f"{stage}/{k}"]).abs().max().item() for k in one)
        assert worst < TOLERANCE, (stage, worst)
    # ... while one process with the per-rank batch (4, not 8) ends far from them: the tolerance tells the two apart
    half = tmp_path / "half_batch_run"
    half.mkdir()
    for name in ("tokenizer", "dvae"):
        shutil.copytree(run / name, half / name)
    plan = dataclasses.replace(TINY_PLAN, transformer_batch_size=4)
    train_all.train_all(half, data=data, plan=plan, precision="fp32", cache_dir=tmp_path / "cache",
                        stages=("tokenizer", "dvae", "transformer"), progress=False, log=lambda _: None)
    other = load_file(str(half / "transformer" / "model.safetensors"))
    assert max((other[k] - rank0[f"transformer/{k}"]).abs().max().item() for k in other) > 100 * TOLERANCE
