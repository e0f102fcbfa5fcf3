"""What the three training loops share: schedule, optimizer groups, the finite-loss guard, the metrics log."""

import json

import pytest
import torch

from dalle_mini_impl import checkpoints, train_common
from dalle_mini_impl.clip import CLIP, CLIPConfig
from dalle_mini_impl.dvae import DVAEConfig
from dalle_mini_impl.dvae import lr_at as dvae_lr_at
from dalle_mini_impl.train_clip import lr_at as clip_lr_at


def test_lr_warms_up_linearly_then_follows_a_cosine_to_its_floor():
    lrs = [train_common.lr_at(s, 100, 1e-3, warmup_frac=0.05, end_frac=0.1) for s in range(101)]
    assert lrs[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert lrs[5] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-4)
    assert lrs[5 + 95 // 2] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 47 / 95)).item()))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # never rises after the warm-up


def test_every_model_uses_the_one_schedule():
    d, c = DVAEConfig(), CLIPConfig()
    for s in (0, 10, 500, 3499):
        assert dvae_lr_at(s, 3500, d) == train_common.lr_at(s, 3500, d.lr, d.warmup_frac, d.lr_end_frac)
        assert clip_lr_at(s, 3500, c) == train_common.lr_at(s, 3500, c.lr, c.warmup_frac, c.lr_end_frac)


def test_cosine_runs_from_start_to_end_then_stays():
    assert [train_common.cosine(s, 10, 1.0, 0.0) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert train_common.cosine(3, 0, 1.0, 0.25) == 0.25


def test_set_lr_scales_by_each_groups_multiplier():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_mult": 0.1}], lr=1.0)
    train_common.set_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-4])


def test_decay_groups_spare_biases_norms_and_what_is_named():
    model = CLIP(CLIPConfig(d_model=32, n_heads=2))
    decay, rest = train_common.decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    decay, rest = train_common.decay_groups(model, 0.1, no_decay=[model.image.cls])
    assert any(p is model.image.cls for p in rest["params"]) and all(p is not model.image.cls for p in decay["params"])


def test_precision_auto_follows_the_hardware_and_a_model_may_keep_fp32_on_cpus(monkeypatch):
    monkeypatch.setattr(train_common, "cpu_has_bf16", lambda: True)
    assert train_common.resolve_precision("auto", "cpu") == "bf16"
    assert train_common.resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    assert train_common.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(train_common, "cpu_has_bf16", lambda: False)
    assert train_common.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        train_common.resolve_precision("fp16", "cpu")


def test_a_non_finite_loss_names_the_last_good_checkpoint(tmp_path):
    train_common.check_finite(torch.tensor(1.5), 3, tmp_path / checkpoints.STATE_NAME)  # finite: nothing happens
    with pytest.raises(train_common.TrainingDiverged, match=r"loss is nan at step 7.*step none yet"):
        train_common.check_finite(torch.tensor(float("nan")), 7, tmp_path / checkpoints.STATE_NAME)
    with pytest.raises(train_common.TrainingDiverged, match="loss is inf"):
        train_common.check_finite(torch.tensor(float("inf")), 7, tmp_path / checkpoints.STATE_NAME)


def test_metrics_log_opened_at_a_resumed_step_drops_later_rows_and_a_torn_line(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    log = train_common.MetricsLog(path, step=0)
    for step in (3, 6):
        log.append({"step": step, "loss": 1.0 / step})
    with open(path, "a") as f:
        f.write('{"step": 9, "lo')  # a kill while writing
    resumed = train_common.MetricsLog(path, step=4)  # the checkpoint was at step 4
    resumed.append({"step": 6, "loss": 0.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [3, 6]
    off = train_common.MetricsLog(tmp_path / "other.jsonl", step=0, enabled=False)  # other ranks: nothing written
    off.append({"step": 1})
    assert not (tmp_path / "other.jsonl").exists()


def test_setup_seeds_resolves_and_silences_nothing_in_one_process(tmp_path):
    run = train_common.setup(tmp_path, batch_size=4, seed=3, device="cpu", precision="fp32", threads=1,
                             log=lambda _: None)
    first = torch.rand(3)
    train_common.setup(tmp_path, batch_size=4, seed=3, device="cpu", precision="fp32", threads=1)
    assert torch.equal(first, torch.rand(3))  # the same seed draws the same numbers
    assert run.main and run.precision == "fp32" and run.state_path == tmp_path / checkpoints.STATE_NAME
    assert run.compile(len) is len  # no compilation on a CPU
    assert list(run.progress(range(2, 5), 2, 5, desc="x")) == [2, 3, 4]
    quiet = train_common.progress(range(3), 0, 3, enabled=False)
    quiet.set_postfix(loss=1.0)
    quiet.close()
    assert list(quiet) == [0, 1, 2]


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_a_gpu_needs_native_bf16(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 says through emulation
    assert train_common.resolve_precision("auto", "cuda") == expected
