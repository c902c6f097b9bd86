"""The MAE pretraining step beside the CLIP pretraining step on the same ViT: images/s of each and their ratio.

  python benchmarks/mae_step.py --json mae_step.json                          # ViT-S/16 at 224 px, batch 16
  (run from the repository root: the configs are read from configs/)
  python benchmarks/mae_step.py --model vit_b16 --batch 256 --json gpu.json   # the paper's encoder on a card

Both steps are the real ones (`clipjax.tasks.mae` and `clipjax.tasks.pretrain`: sharded jit, AdamW, the
finite-gradient guard) on one device-resident batch of random images (CLIP: random captions too), compiled
ahead and timed after warm-up steps. CLIP runs its image tower on every patch and the base text tower; MAE
runs the encoder on the 25% visible patches and its decoder (8 blocks of 512) on all of them. Writes both
rates, the ratio and the compile times, with the date and the machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from report import emit, environment
from train_step import random_batch

from clipjax.config import load_config
from clipjax.models import build_clip
from clipjax.parallel import batch_sharding, make_mesh, put_batch
from clipjax.tasks import mae, pretrain
from clipjax.train.loop import shard_functions
from clipjax.train.optim import make_optimizer


def time_step(init_state, train_step, config, batch: dict[str, np.ndarray], steps: int, warmup: int) -> dict:
    """Compiles `train_step` with the run's shardings and times `steps` calls after `warmup` ones."""
    mesh = make_mesh(config.mesh)
    init, step, _ = shard_functions(init_state, train_step, mesh, config)
    state = init(jax.random.PRNGKey(0))
    placed = put_batch(batch, batch_sharding(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, placed).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = compiled(state, placed)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, placed)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    return {"images_per_s": config.batch_size / step_s, "step_ms": 1000 * step_s, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_s16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    common = [("batch_size", str(args.batch)), ("model.name", args.model), ("model.dtype", args.dtype),
              ("model.image_size", str(args.image_size))]  # fmt: skip

    clip_config = load_config("configs/pretrain/vit_b16_datacomp.py", [*common, ("data.path", "/unused")])
    clip_config.data.captions = "real"
    model = build_clip(clip_config.model)
    tx = make_optimizer(clip_config.optim, clip_config.total_steps)
    batch = random_batch(clip_config, np.random.default_rng(0))
    clip = time_step(pretrain.make_init_state(model, tx, clip_config),
                     pretrain.make_train_step(model, tx, clip_config, make_mesh(clip_config.mesh)),
                     clip_config, batch, args.steps, args.warmup)  # fmt: skip

    mae_config = load_config("configs/pretrain/mae_vit_b16.py", [*common, ("data.path", "/unused")])
    model = mae.build_mae(mae_config)
    tx = make_optimizer(mae_config.optim, mae_config.total_steps)
    masked = time_step(mae.make_init_state(model, tx, mae_config), mae.make_train_step(model, tx, mae_config),
                       mae_config, {"image": batch["image"]}, args.steps, args.warmup)  # fmt: skip

    result = {
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.batch,
        "dtype": args.dtype,
        "clip": clip,
        "mae": masked,
        "mae_over_clip_images_per_s": masked["images_per_s"] / clip["images_per_s"],
        **environment(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
