"""Every config key clipjax knows, with its default and what it means.

A config file only sets what differs from these defaults; a key that is not listed here is rejected with
a suggestion (see `clipjax.config.merge_onto_defaults`). Keep this file the one place a key is introduced.
"""

from __future__ import annotations

from ml_collections import ConfigDict


def base_config() -> ConfigDict:
    """The default config tree; `None` marks a value that is unset or taken from a preset."""
    c = ConfigDict()
    c.task = "pretrain"  # what `clipjax.main` runs: see clipjax/tasks/
    c.seed = 0  # parameter init, data order and any randomness in the step derive from it
    c.batch_size = 256  # global: summed over every device of every host
    c.total_steps = 1000
    c.log_every = 50  # steps between metrics.jsonl / TensorBoard rows
    c.checkpoint_every = 1000  # steps between checkpoints (one is always written at the end)
    c.keep_checkpoints = 3  # the newest N are kept
    c.keep_every = 0  # also keep every checkpoint whose step is a multiple of this (0: none)
    c.max_bad_steps = 10  # stop after this many updates in a row skipped for non-finite loss/grads (0: never)
    c.preemption_grace_s = 120.0  # after SIGTERM/SIGINT, save and exit within this many seconds
    # Multi-host: steps between the hosts agreeing whether any got a stop request (each check syncs them).
    c.stop_check_every = 10
    # Where checkpoints go; None: <workdir>/checkpoints. Any path orbax writes to, e.g. gs://BUCKET/run/ckpt
    # (every host of a multi-host job must see the same directory).
    c.checkpoint_dir = None
    c.eval_every = 0  # steps between evaluations; 0 evaluates only at the end
    c.init = None  # a checkpoint directory to start from (finetuning); None: random init
    c.progress_bar = True

    # Devices form a mesh with axes (data, fsdp); -1 takes the devices left over. The batch is split over
    # both axes; parameters and optimizer state are split over `fsdp` (see clipjax/parallel.py).
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    # Arrays smaller than this many elements stay replicated: sharding them costs more in collectives
    # than it saves in memory.
    c.fsdp_min_size = 2**16

    c.model = ConfigDict()
    c.model.name = "vit_b16"  # image tower preset: vit_{ti,s,b,l}{14,16,32}
    c.model.image_size = 224
    c.model.embed_dim = 512  # shared image-text embedding width
    # Overrides of the image tower preset (None keeps the preset's value). pool: "cls" or "mean" (of the
    # patch tokens); stem: "patch" (one strided conv, as CLIP) or "conv" (a small conv stack, Xiao et al.).
    c.model.image = ConfigDict(
        {
            "width": None,
            "depth": None,
            "heads": None,
            "mlp_dim": None,
            "patch_size": None,
            "pool": "cls",
            "stem": "patch",
        }
    )
    # Text tower: a preset plus overrides; the tokenizer pads/truncates captions to context_length.
    c.model.text = ConfigDict(
        {
            "name": "base",
            "width": None,
            "depth": None,
            "heads": None,
            "mlp_dim": None,
            "context_length": 77,
            "vocab_size": 49408,
            "causal": True,  # causal attention mask (OpenAI CLIP); False for MobileCLIP-S1/S2's text towers
        }
    )
    c.model.act = "gelu"  # "gelu" (open_clip, LAION/DataComp weights) or "quick_gelu" (OpenAI weights)
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    c.model.remat = "none"  # rematerialise each block: "none", "full" (save nothing), "dots" (save matmuls)
    c.model.temperature_init = 0.07  # the logit scale starts at 1 / temperature_init
    c.model.logit_scale_max = 100.0  # the logit scale is clamped to [1, logit_scale_max] after each update
    c.model.logit_bias_init = None  # a learnable logit bias starting here (SigLIP: -10); None: no bias
    # BatchNorm of MCi image towers in training: "train" (batch statistics of the global batch, running
    # averages updated, as MobileCLIP trains) or "frozen" (the stored statistics, e.g. finetuning converted weights).
    c.model.batch_norm = "train"

    # Contrastive loss over the global batch. kind: "clip" (softmax both ways) or "siglip" (pairwise
    # sigmoid; needs model.logit_bias_init). impl: "fused" (tiled, O(B) memory, sharded over the mesh)
    # or "naive" (materialises the B x B logits). block_size: the fused loss's tile side.
    c.loss = ConfigDict({"kind": "clip", "impl": "fused", "block_size": 1024})

    c.optim = ConfigDict(
        {
            "lr": 1e-3,  # peak learning rate
            "warmup_steps": 1000,  # linear warmup from 0
            "min_lr_ratio": 0.0,  # cosine decay ends at lr * min_lr_ratio
            "weight_decay": 0.2,  # decoupled (AdamW); not applied to biases, norms, 1-D params, the scale
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-6,
            "grad_clip_norm": 1.0,  # global-norm clipping; 0 disables it
        }
    )

    c.data = ConfigDict()
    c.data.kind = "synthetic"  # synthetic | webdataset | tfds | folder
    c.data.path = None  # shards ("/d/{00000..00099}.tar", globs; "::" joins patterns) or a dataset directory
    c.data.synthetic_path = None  # DataCompDR shards, joined by uid to the image shards of the same file name
    c.data.index_cache = None  # where tar indexes go when the shards' directory is read-only (~/.cache/clipjax)
    # Which caption each image is paired with. On the synthetic dataset "real" is the noisy alt-text-like
    # caption and "synthetic" the quality caption, mirroring DataComp vs DataCompDR.
    c.data.captions = "synthetic"  # real | synthetic | mixed | both
    c.data.synthetic_prob = 0.5  # with captions="mixed": chance the synthetic caption replaces the real one
    c.data.normalize = "clip"  # "clip": OpenAI mean/std; "none": pixels in [0, 1] (MobileCLIP)
    c.data.crop_scale = (0.9, 1.0)  # RandomResizedCrop's range of the crop's share of the image area (open_clip)
    c.data.flip = False  # random horizontal flips (off: captions say "left" and "right")
    c.data.num_workers = 0  # grain worker processes; 0 decodes in threads of the training process
    c.data.num_threads = 2  # grain reader threads per process
    c.data.synthetic = ConfigDict({"num_examples": 100_000, "max_objects": 4})

    c.eval = ConfigDict()
    c.eval.num_threads = 8  # evaluation images decoded in parallel per host
    # Zero-shot classification, logged as eval/zeroshot_top1 and _top5. kind: "synthetic" (held-out
    # scenes), "tfds" (a TFDS array_record dataset under `path`, e.g. imagenet2012), "folder" (an
    # ImageFolder root: path/<class>/<image>) or "none". classnames: "imagenet" (the 1000 OpenAI class
    # names and 80 prompt templates shipped with clipjax, in the standard label order) or "source" (the
    # dataset's own class names, with the same templates). num_examples: scenes generated (synthetic,
    # default 1000), or the first N of the split (tfds/folder; None: all of it, exact).
    c.eval.zeroshot = ConfigDict(
        {
            "kind": "synthetic",
            "path": None,
            "dataset": "imagenet2012",
            "split": "validation",
            "classnames": "imagenet",
            "num_examples": None,
            "batch_size": 256,
        }
    )
    # Image-text retrieval R@1/5/10 both ways (eval/retrieval_i2t_r1, ...): a JSONL of
    # {"image": path, "captions": [...]} (COCO 5k test, Flickr30k 1k test); None: off.
    c.eval.retrieval = ConfigDict({"path": None, "batch_size": 256})
    return c
