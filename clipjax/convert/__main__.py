"""Converts a PyTorch CLIP checkpoint into clipjax weights usable with `--config.init=DIR`.

  python -m clipjax.convert --source=open_clip --model=ViT-B-16 --checkpoint=FILE --workdir=DIR
  python -m clipjax.convert --source=timm --model=fastvit_mci2 --checkpoint=FILE --workdir=DIR
  python -m clipjax.convert --source=mae --model=vit_b16 --checkpoint=mae_pretrain_vit_base.pth --workdir=DIR

`--source=open_clip` converts a whole CLIP (both towers); `--source=timm` a timm `fastvit_mci0/1/2` image
tower alone (its classifier becomes the projection), for finetuning; `--source=mae` a released MAE encoder
(facebookresearch/mae's checkpoints, timm's `vit_*_patch16_224.mae`) as the ViT preset `--model` in MAE's
layout, for finetuning.

FILE: a `.safetensors` file (read without PyTorch) or a `.pt` / `.bin` state dict (needs PyTorch). Models:
see `--help`. Keys the model does not use, keys it needs that are absent and shape mismatches are all
named in one error line (exit status 2); nothing is written then. DIR must not hold converted weights yet.
Exit status: 0 written; 1 unreadable file or unwritable DIR; 2 bad arguments or a checkpoint that does not fit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m clipjax.convert --source=open_clip|timm|mae --model=NAME --checkpoint=FILE --workdir=DIR"


def parse(argv: Sequence[str]) -> dict[str, str]:
    """{"source", "model", "checkpoint", "workdir"} from `--key=value` / `--key value` arguments."""
    from clipjax.errors import ConfigError

    wanted = ("source", "model", "checkpoint", "workdir")
    values: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in wanted:
            raise ConfigError(f"unexpected argument {arg!r}; {USAGE}")
        if not sep:
            if not args:
                raise ConfigError(f"--{name} needs a value; {USAGE}")
            value = args.pop(0)
        values[name] = value
    missing = [name for name in wanted if name not in values]
    if missing:
        raise ConfigError(f"missing --{', --'.join(missing)}; {USAGE}")
    return values


def convert(source: str, model_name: str, checkpoint: str, workdir: str) -> str:
    """Reads, converts and writes; returns a one-line description of what was written."""
    import jax

    from clipjax.convert.fastvit import fastvit_to_mci
    from clipjax.convert.mae import MAE_NORMALIZE, convert_mae, mae_model_config
    from clipjax.convert.openclip import (
        OPEN_CLIP_MODELS,
        convert_open_clip,
        open_clip_model_config,
        open_clip_normalize,
    )
    from clipjax.convert.state_dict import read_state_dict
    from clipjax.defaults import base_config
    from clipjax.errors import ConfigError
    from clipjax.models.mci import MCI_PRESETS
    from clipjax.weights import save_converted

    state_dict = read_state_dict(checkpoint)
    if source == "open_clip":
        if model_name not in OPEN_CLIP_MODELS:
            choices = ", ".join(OPEN_CLIP_MODELS)
            raise ConfigError(f"--model={model_name!r} is not supported; choose one of {choices}")
        model = open_clip_model_config(model_name)
        variables = convert_open_clip(state_dict, model)
        normalize, towers = open_clip_normalize(model_name), ("image", "text")
    elif source == "timm":
        name = model_name.removeprefix("fastvit_")
        if name not in MCI_PRESETS:
            choices = ", ".join(f"fastvit_{n}" for n in MCI_PRESETS)
            raise ConfigError(f"--model={model_name!r} is not supported with --source=timm; choose one of {choices}")
        model = base_config().model
        # The classifier is the projection: its width is the embedding width (512 in MobileCLIP).
        embed_dim = int(state_dict["head.fc.weight"].shape[0]) if "head.fc.weight" in state_dict else 512
        model.update(name=name, image_size=256, embed_dim=embed_dim)
        image = fastvit_to_mci(state_dict, name, num_classes=embed_dim)
        variables = {"params": {"image": image["params"]}, "batch_stats": {"image": image["batch_stats"]}}
        normalize, towers = "none", ("image",)
    elif source == "mae":
        model = mae_model_config(model_name, state_dict)
        variables = convert_mae(state_dict, model)
        normalize, towers = MAE_NORMALIZE, ("image",)
    else:
        raise ConfigError(f"--source={source!r} is not supported; use --source=open_clip, timm or mae")
    save_converted(
        workdir, variables, model, normalize=normalize, source=f"{source} {model_name} from {checkpoint}", towers=towers
    )
    count = sum(value.size for value in jax.tree.leaves(variables["params"]))
    return f"converted {source} {model_name} ({count / 1e6:.1f}M parameters) from {checkpoint} into {workdir}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        from clipjax.convert.openclip import OPEN_CLIP_MODELS

        print(__doc__.strip() + "\n\nopen_clip models: " + ", ".join(OPEN_CLIP_MODELS))
        print("timm models: fastvit_mci0, fastvit_mci1, fastvit_mci2")
        print("mae models: any ViT preset, e.g. vit_b16 (MAE's ViT-B/16), vit_l16")
        return 0
    from clipjax.errors import UserError

    try:
        args = parse(argv)
        print(convert(args["source"], args["model"], args["checkpoint"], args["workdir"]), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
