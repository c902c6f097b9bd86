"""open_clip's training step for the same CLIP as a clipjax config, timed on the same card (PyTorch).

`train_step.py --compare-open-clip` calls `measure_open_clip`; PyTorch and open_clip are optional (the test
extra installs them). The model is built from the clipjax config's dimensions (open_clip's own ViT and text
transformer), trained as open_clip's `main.py` does: torch.optim.AdamW, ClipLoss, and bf16 autocast when
the clipjax config computes in bfloat16, on random data already on the device.
"""

from __future__ import annotations

import time

import numpy as np
from ml_collections import ConfigDict

from clipjax.models.presets import image_tower_dims, text_tower_dims


def build_open_clip(model: ConfigDict, device: str):
    """An open_clip CLIP with the towers `config.model` describes (ViT image towers only)."""
    import open_clip

    image, text = image_tower_dims(model), text_tower_dims(model)
    vision_cfg = open_clip.model.CLIPVisionCfg(
        layers=image["depth"],
        width=image["width"],
        head_width=image["width"] // image["heads"],
        mlp_ratio=image["mlp_dim"] / image["width"],
        patch_size=image["patch_size"],
        image_size=model.image_size,
    )
    text_cfg = open_clip.model.CLIPTextCfg(
        context_length=model.text.context_length,
        vocab_size=model.text.vocab_size,
        width=text["width"],
        heads=text["heads"],
        layers=text["depth"],
        mlp_ratio=text["mlp_dim"] / text["width"],
        no_causal_mask=not model.text.causal,
    )
    if model.act == "gelu_tanh":
        raise ValueError("open_clip has no tanh-approximated GELU to compare with; use model.act='gelu'")
    return open_clip.model.CLIP(model.embed_dim, vision_cfg, text_cfg, quick_gelu=model.act == "quick_gelu").to(device)


def measure_open_clip(config: ConfigDict, steps: int, warmup: int, compile_model: bool = False) -> dict:
    """Times open_clip's step at `config.batch_size` (one caption per image), then returns PyTorch's cached
    device memory so that a JAX step measured next in the same process has the card.

    Returns:
      {"pairs_per_s", "step_ms", "compile_s" (first steps, incl. torch.compile), "peak_device_memory_bytes",
       "torch", "open_clip", "compiled", "loss"}.
    """
    import torch

    results = _time_steps(config, steps, warmup, compile_model)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def _time_steps(config: ConfigDict, steps: int, warmup: int, compile_model: bool) -> dict:
    import open_clip
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_open_clip(config.model, device)
    if compile_model:
        model = torch.compile(model)
    optim = config.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps, weight_decay=optim.weight_decay
    )
    loss_fn = open_clip.loss.ClipLoss()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config.model.dtype == "bfloat16")
    rng = np.random.default_rng(0)
    batch, size, length = config.batch_size, config.model.image_size, config.model.text.context_length
    images = torch.from_numpy(rng.standard_normal((batch, 3, size, size), np.float32)).to(device)
    text = rng.integers(1, 49406, (batch, length))
    text[:, -1] = 49407  # the end token (the largest id) is what open_clip pools
    text = torch.from_numpy(text).to(device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            image_features, text_features, logit_scale = model(images, text)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip_norm)
        optimizer.step()
        return loss

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        loss = step()
    synchronize()
    compile_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {
        "pairs_per_s": batch / step_s,
        "step_ms": 1000 * step_s,
        "compile_s": compile_s,
        "peak_device_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "compiled": compile_model,
        "loss": float(loss.detach()),
    }
