"""Checkpoints: safetensors + config.json round trips, atomic resume files, and clear errors."""

import json
import random

import numpy as np
import pytest
import torch

from dalle_mini_impl import checkpoints
from dalle_mini_impl.checkpoints import CheckpointError
from dalle_mini_impl.dvae import DVAE, DVAEConfig

TINY = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)


def _saved(tmp_path, config=TINY):
    torch.manual_seed(0)
    model = DVAE(config)
    checkpoints.save_model(model, config, tmp_path, "dvae")
    return model


def _load(path, config_cls=DVAEConfig):
    return checkpoints.load_model(path, DVAE, config_cls, "dvae")


def test_save_load_round_trip(tmp_path):
    model = _saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "dvae"
    loaded = _load(tmp_path)
    assert loaded.config == TINY and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_no_pickle_on_disk(tmp_path):
    _saved(tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:8]
    header_len = int.from_bytes(head, "little")  # safetensors: 8-byte length, then a JSON header
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert "encoder.stem.weight" in header


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder.*config.json and model.safetensors"):
        _load(tmp_path / "nope")
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: file not found"):
        _load(tmp_path)


def test_truncated_weights(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read.*truncated or corrupt"):
        _load(tmp_path)


def test_truncated_config(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        _load(tmp_path)


def test_weights_from_another_config(tmp_path):
    _saved(tmp_path)
    other = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=64)  # another codebook size
    checkpoints.save_config(other, tmp_path, "dvae")  # config.json now disagrees with the weights
    with pytest.raises(CheckpointError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert "model.safetensors" in msg and "encoder.to_logits.2.weight" in msg
    assert "has shape (32, 64, 1, 1), expected (64, 64, 1, 1)" in msg  # found vs expected


def test_config_of_another_model_type_or_unknown_field(tmp_path):
    _saved(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "model_type": "clip"}))
    with pytest.raises(CheckpointError, match="expected model_type 'dvae', found 'clip'"):
        _load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**data, "n_heads": 4}))
    with pytest.raises(CheckpointError, match=r"unknown DVAEConfig fields \['n_heads'\]"):
        _load(tmp_path)


def _state(tmp_path, config=TINY):
    torch.manual_seed(0)
    model = DVAE(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 64, 64), tau=1.0).loss.backward()
    opt.step()
    return model, opt


def test_training_state_round_trip_with_rng(tmp_path):
    model, opt = _state(tmp_path)
    path = tmp_path / checkpoints.STATE_NAME
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    checkpoints.save_training_state(path, model, opt, step=7, config=TINY, extra={"steps": 10})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    model2 = DVAE(TINY)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    step, extra = checkpoints.load_training_state(path, model2, opt2, TINY)
    assert step == 7 and extra == {"steps": 10}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        assert torch.equal(s1["state"][i]["exp_avg"], s2["state"][i]["exp_avg"])


def test_training_state_from_another_config(tmp_path):
    model, opt = _state(tmp_path)
    path = tmp_path / checkpoints.STATE_NAME
    checkpoints.save_training_state(path, model, opt, step=3, config=TINY)
    other = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32, lr=5e-4)
    with pytest.raises(CheckpointError, match=r"train_state\.pt: was saved with another config \(lr: saved 0\.001 vs now 0\.0005\)"):
        checkpoints.load_training_state(path, DVAE(other), torch.optim.AdamW(DVAE(other).parameters()), other)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    model = _saved(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(checkpoints, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(model, TINY, tmp_path, "dvae")
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left behind


def test_export_halves_the_file_and_loads_to_nearly_the_same_model(tmp_path):
    from dalle_mini_impl.cli import main
    from dalle_mini_impl.dvae import DVAE, DVAEConfig
    from dalle_mini_impl.dvae import load as load_dvae

    torch.manual_seed(0)
    config = DVAEConfig(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
    model = DVAE(config).eval()
    checkpoints.save_model(model, config, tmp_path / "full", "dvae")
    (tmp_path / "full" / "training.json").write_text('{"steps": 3}')  # what a loop recorded travels along
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "half")]) == 0
    assert (tmp_path / "half" / "training.json").read_text() == '{"steps": 3}'
    assert (tmp_path / "half" / "config.json").read_text() == (tmp_path / "full" / "config.json").read_text()
    full, half = (tmp_path / p / "model.safetensors" for p in ("full", "half"))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_dvae(tmp_path / "half", device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # cast back on loading
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.decode(model.encode(x)), model.decode(model.encode(x)), atol=2e-3, rtol=0)
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
