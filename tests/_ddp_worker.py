"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU); not a test itself.

Usage: torchrun ... _ddp_worker.py DATA_DIR RUN_DIR OUT_DIR

Trains the tiny plan of tests/_tiny.py on the images in DATA_DIR into
RUN_DIR, one stage at a time, and writes what each rank ended with to
OUT_DIR/rank<r>.safetensors (``<stage>/<tensor name>``), plus the world size
and each rank's per-rank batch in OUT_DIR/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for the tiny plan

from _tiny import TINY_PLAN  # noqa: E402

from dalle_mini_impl import distributed, train_all  # noqa: E402


def main() -> None:
    data_dir, run_dir, out_dir = (Path(a) for a in sys.argv[1:4])
    run = train_all.open_run(run_dir, data_dir, TINY_PLAN, precision="fp32", threads=1, progress=False,
                             cache_dir=run_dir / "cache", log=lambda s: None)
    train_all.train_tokenizer_stage(run)
    models = {"dvae": train_all.train_dvae_stage(run), "transformer": train_all.train_transformer_stage(run),
              "clip": train_all.train_clip_stage(run)}
    tensors = {f"{stage}/{k}": v.detach().cpu().contiguous()
               for stage, model in models.items() for k, v in model.state_dict().items()}
    r = distributed.rank()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / f"rank{r}.safetensors"))
    info = {"world_size": distributed.world_size(), "rank": r, "device": run.device,
            "per_rank_batch": distributed.per_rank_batch(TINY_PLAN.transformer_batch_size),
            "backend": torch.distributed.get_backend()}
    (out_dir / f"rank{r}.json").write_text(json.dumps(info))
    distributed.cleanup()


if __name__ == "__main__":
    main()
