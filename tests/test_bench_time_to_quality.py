"""bench/bench_time_to_quality.py end to end on tiny models (--quick): every stage, the curve, the JSON and the plot."""

import importlib.util
import json
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_time_to_quality", REPO / "bench" / "bench_time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_trains_every_stage_and_records_a_curve_that_redraws_from_its_json(tmp_path, capsys):
    bench = load_bench()
    out, plot = tmp_path / "ttq.json", tmp_path / "ttq.png"
    result = bench.main(["--quick", "--prompts", "2", "--candidates", "2", "--run-dir", str(tmp_path / "run"),
                         "--out", str(out), "--plot", str(plot)])
    printed = capsys.readouterr().out

    assert set(result["stage_seconds"]) == {"tokenizer", "dvae", "clip", "transformer"}
    assert all(seconds > 0 for seconds in result["stage_seconds"].values())
    curve = result["curve"]
    assert curve and curve[-1]["step"] == result["plan"]["transformer_steps"]  # no budget: the whole plan
    assert [p["step"] for p in curve] == sorted({p["step"] for p in curve})
    assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve)
    for point in curve:
        for key in ("seen_top1", "seen_random", "compositional_top1", "compositional_random"):
            assert 0.0 <= point[key] <= 1.0
    for name in ("tokenizer", "dvae", "clip", "transformer"):  # every model of the run was written
        assert (tmp_path / "run" / name).is_dir()
    assert "goal, seen-split CLIP top-1 >= 90%" in printed and "at 30 minutes:" in printed

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = tmp_path / "again.png"
    full = {**result, "quick": False}  # a run of the cpu plan changed with --set: its title names the changes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a label outside the axes that tight_layout cannot fit
        redrawn = bench.main(["--from-json", str(out), "--plot", str(again)])
        bench.plot_curve(full, tmp_path / "full.png")
    assert redrawn["goal"] == result["goal"] and redrawn["at_30_minutes"] == result["at_30_minutes"]
    assert again.stat().st_size > 0
    assert (tmp_path / "full.png").stat().st_size > 0
    assert "wall time per stage" in capsys.readouterr().out
