"""bench/gpu_check.py: on a machine without a GPU it says so and exits 0; --device cpu runs every step tiny."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_succeeds(capsys, monkeypatch):
    check = load_check()
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: False)
    assert check.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_every_step_runs_on_a_cpu_at_tiny_sizes(capsys):
    assert load_check().main(["--device", "cpu", "--seconds", "0.5"]) == 0
    table = capsys.readouterr().out
    for row in ("precision chosen by auto", "flex vs dense (row)", "dVAE gpu preset", "transformer gpu preset",
                "CLIP gpu preset", "sampling speed"):
        assert row in table
    assert "sampler: KV cache = recomputed prefix  equal codes" in table
