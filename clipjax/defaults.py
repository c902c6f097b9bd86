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
    # XLA's persistent compilation cache: a directory (local or gs://) where compiled steps are kept, so a
    # restart or the next run with the same program skips compilation. None: off (unless the environment
    # sets JAX_COMPILATION_CACHE_DIR).
    c.compilation_cache_dir = None

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
    # patch tokens); stem: "patch" (one strided conv, as CLIP), "conv" (a small conv stack, Xiao et al.) or
    # "mci" (MobileCLIP-B's conv stem with BatchNorm); layout: "clip" (OpenAI's ViT), "timm" (timm's, as
    # MobileCLIP-B: no ln_pre, no CLS position embedding, LayerNorm epsilon 1e-6, projection bias) or "mae"
    # (He et al.'s: no ln_pre, a sine-cosine position embedding with a CLS row, epsilon 1e-6, patch bias).
    c.model.image = ConfigDict(
        {
            "width": None,
            "depth": None,
            "heads": None,
            "mlp_dim": None,
            "patch_size": None,
            "pool": "cls",
            "stem": "patch",
            "layout": "clip",
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
    # "gelu" (exact; open_clip, LAION/DataComp weights), "quick_gelu" (OpenAI weights) or "gelu_tanh" (from scratch)
    c.model.act = "gelu"
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    # Rematerialise each block: "none", "full" (save nothing), "dots" (save matmuls and cuDNN attention).
    c.model.remat = "none"
    # Attention kernel of ViT and text blocks: "auto" (cuDNN flash attention on CUDA GPUs with bfloat16
    # compute, XLA elsewhere), "xla", or "cudnn" (an error where cuDNN cannot run).
    c.model.attention = "auto"
    # Step the transformer blocks with nn.scan (one compiled block per tower, parameters stacked on a leading
    # [depth] axis): compile time stops growing with depth; the function is the same, and checkpoints load
    # into either layout. Not with ViTDet's window attention (its windowed and global blocks differ).
    c.model.scan = False
    # FP8 products in the ViT and text towers' transformer blocks (qkv, attention output, MLP), each tensor
    # scaled by its current maximum (clipjax.models.fp8): "none"; "switchback" (forward and input-gradient
    # products in FP8, weight gradients in `dtype`: the split Wortsman et al. 2023 trained CLIP with in 8
    # bits); "all" (weight gradients too). On Hopper GPUs XLA runs them as FP8 GEMMs (twice the bf16 rate);
    # elsewhere the values are the same, at the wider products' speed. Parameters and checkpoints are the
    # same with any recipe.
    c.model.fp8_matmuls = "none"
    # How those FP8 products scale the activations and their gradients: 0 by each tensor's current maximum (no
    # state); N > 0 by the largest maximum of the last N steps (*delayed scaling*, as Transformer Engine does:
    # the rounding no longer waits for a reduction over the tensor, less memory traffic on GPUs), the
    # histories kept in the model state ("fp8_stats") and the checkpoints. Weights keep current scaling.
    c.model.fp8_amax_history = 0
    c.model.temperature_init = 0.07  # the logit scale starts at 1 / temperature_init
    c.model.logit_scale_max = 100.0  # the logit scale is clamped to [1, logit_scale_max] after each update
    c.model.logit_bias_init = None  # a learnable logit bias starting here (SigLIP: -10); None: no bias
    # Stochastic depth (drop path) of the image tower's residual branches while training: the rate of the last
    # block, rising linearly from 0 at the first (as timm and MAE); 0 turns it off. Active only in steps that
    # pass a "dropout" rng (training), never in evaluation.
    c.model.drop_path = 0.0
    # BatchNorm of MCi image towers in training: "train" (batch statistics of the global batch, running
    # averages updated, as MobileCLIP trains) or "frozen" (the stored statistics, e.g. finetuning converted weights).
    c.model.batch_norm = "train"

    # Contrastive loss over the global batch. kind: "clip" (softmax both ways) or "siglip" (pairwise
    # sigmoid; needs model.logit_bias_init). impl: "fused" (tiled, O(B) memory, sharded over the mesh)
    # or "naive" (materialises the B x B logits). block_size: the fused loss's tile side.
    # distill_weight: MobileCLIP's distillation from the teacher embeddings stored in DataCompDR shards (needs
    # data.kind="webdataset" with data.synthetic_path; each sample's stored augmentation is replayed so the
    # teacher saw the same crop); the loss becomes (1 - w) CLIP + w KD. MobileCLIP: 0.75 for ViT-B, 1.0 for its
    # small models; 0: off. teacher_dims: the ensemble members' widths in the stored vectors (DataCompDR: two
    # ViT-L/14s); teacher_scale: the logit scale of the teacher's similarities.
    c.loss = ConfigDict(
        {
            "kind": "clip",
            "impl": "fused",
            "block_size": 1024,
            "distill_weight": 0.0,
            "teacher_dims": (768, 768),
            "teacher_scale": 100.0,
        }
    )

    c.optim = ConfigDict(
        {
            "lr": 1e-3,  # peak learning rate
            "warmup_steps": 1000,  # linear warmup from 0
            "min_lr_ratio": 0.0,  # the decay ends at lr * min_lr_ratio
            "schedule": "cosine",  # after warmup: "cosine", or "poly" ((1 - progress) ** poly_power, mmseg)
            "poly_power": 1.0,
            # "step": the lr is multiplied by step_factor at each boundary (fractions of total_steps; ViTDet's
            # Mask R-CNN schedules decay at 88.9% and 96.3%).
            "step_boundaries": (0.889, 0.963),
            "step_factor": 0.1,
            "weight_decay": 0.2,  # decoupled (AdamW); not applied to biases, norms, 1-D params, the scale
            # Parameter names (the last key of their path) never decayed either: MAE, BEiT and ViTDet finetune
            # with ("pos_embed", "cls_token"); open_clip's pretraining decays the position embedding.
            "no_decay": (),
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-6,
            "grad_clip_norm": 1.0,  # global-norm clipping; 0 disables it
            # Finetuning: layer-wise learning-rate decay (BEiT/MAE): the parameters of layer i of L get
            # lr * layer_decay ** (L + 1 - i) (the stem is layer 0, the head L + 1); 1.0 turns it off.
            "layer_decay": 1.0,
            # Exponential moving average of the parameters (0: none); evaluation then reports both the raw and
            # the averaged weights (eval/... and eval_ema/...).
            "ema_decay": 0.0,
        }
    )

    c.data = ConfigDict()
    c.data.kind = "synthetic"  # synthetic | webdataset | tfds | folder
    c.data.path = None  # shards ("/d/{00000..00099}.tar", globs; "::" joins patterns) or a dataset directory
    c.data.synthetic_path = None  # DataCompDR shards, joined by uid to the image shards of the same file name
    c.data.index_cache = None  # where tar indexes go when the shards' directory is read-only (~/.cache/clipjax)
    # Which caption each image is paired with. On the synthetic dataset "real" is the noisy alt-text-like
    # caption and "synthetic" the quality caption, mirroring DataComp vs DataCompDR.
    c.data.captions = "synthetic"  # real | synthetic | mixed | both | bag (the built-in scenes' bag of words)
    c.data.synthetic_prob = 0.5  # with captions="mixed": chance the synthetic caption replaces the real one
    c.data.normalize = "clip"  # "clip": OpenAI mean/std; "imagenet": torchvision's (MAE); "none": [0, 1] (MobileCLIP)
    c.data.crop_scale = (0.9, 1.0)  # RandomResizedCrop's range of the crop's share of the image area (open_clip)
    c.data.flip = False  # random horizontal flips (off: captions say "left" and "right")
    # Labelled data (finetuning, kinds tfds and folder): the TFDS dataset name under data.path, and the split
    # names (TFDS splits, or the sub-directories of an ImageFolder root, e.g. "train" and "val").
    c.data.dataset = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.num_workers = 0  # grain worker processes; 0 decodes in threads of the training process
    # Batches read and placed on the devices ahead of the step by a background thread, so the devices do not
    # wait for the next batch's read and copy after the loop blocks (logging, evaluation, checkpoints).
    # 0: the loop places each batch itself.
    c.data.prefetch_to_device = 2
    c.data.num_threads = 2  # grain reader threads per process
    # The built-in scenes (clipjax/data/synthetic.py: SyntheticScenes documents each option). The defaults give
    # the scenes every published demo figure was measured on. perspective: objects on a ground plane, so the
    # image shows their depth; haze: colours fade with distance (0..1); caption_detail: "relations" or "full"
    # (every object's place and the counts); the noisy caption's knobs: noise_keep (how likely it names the
    # main object, each other one), noise_wrong_shape, noise_other_scene (another scene's objects).
    c.data.synthetic = ConfigDict(
        {
            "num_examples": 100_000,
            "max_objects": 4,
            "perspective": False,
            "haze": 0.0,
            "caption_detail": "relations",
            "noise_keep": (0.6, 0.4),
            "noise_wrong_shape": 0.0,
            "noise_other_scene": 0.0,
        }
    )
    # Data-scaling studies: train on a fixed subset of N training records (None: all), the first N of a fixed
    # order (the built-in scenes': their own; any other source's: seeded by subset_seed), so smaller subsets lie
    # inside larger ones; repeated for as many epochs as the steps need (clipjax/data/subsets.py).
    c.data.subset_size = None
    c.data.subset_seed = 0  # 0 .. 2**32 - 1

    # Finetuning a classifier on the image tower (task "finetune"); the pretrained tower comes from config.init.
    c.finetune = ConfigDict(
        {
            "num_classes": None,  # None: the dataset's number of classes
            "pool": "mean",  # "mean" of the patch tokens + LayerNorm (MAE), or "cls" (the tower's pooled token)
            "head_init_std": 2e-5,  # the new head's weights ~ truncated normal with this std (MAE), bias 0
            "label_smoothing": 0.1,
            # Mixup / CutMix over the batch (timm's "batch" mode: one lambda per step, pairs from the reversed
            # batch); alpha 0 turns each off. Per step: cutmix with probability switch_prob when both are on.
            "mixup_alpha": 0.8,
            "cutmix_alpha": 1.0,
            "mix_switch_prob": 0.5,
            "mix_prob": 1.0,  # chance that a step mixes at all
            # Host-side augmentation in the grain workers: RandAugment (timm "rand-m9-mstd0.5-inc1": ops per
            # image, magnitude out of 10, its per-op standard deviation; ops 0 turns it off) and random
            # erasing (probability per image; 0 turns it off).
            "randaugment_ops": 2,
            "randaugment_magnitude": 9.0,
            "randaugment_magnitude_std": 0.5,
            "random_erasing": 0.25,
            "eval_crop_ratio": 0.875,  # evaluation: resize the shorter side to image_size / ratio, centre crop
            "eval_examples": None,  # the first N of the evaluation split (None: all of it, exact; 1000 synthetic)
            "eval_batch_size": 256,
            # The evaluation metric whose best value's weights are kept in <workdir>/best; None: the task's
            # main one (its TaskSpec's best_metric, e.g. eval/top1 for "finetune", eval/rmse for "depth"). Errors
            # (rmse, abs_rel, ...) count smaller as better, as each task declares.
            "best_metric": None,
        }
    )

    # Monocular depth finetuning (task "depth", NYUv2 or the synthetic scenes' depth maps); the shared
    # finetuning keys (eval_examples, eval_batch_size, best_metric) are config.finetune's, the training crop
    # is model.image_size. data.kind "nyu": data.path is the dataset root, data.train_split / eval_split
    # the split files in it (BTS's nyu_train.txt / nyu_test.txt).
    c.depth = ConfigDict(
        {
            "max_depth": 10.0,  # the head predicts sigmoid * max_depth metres; also the evaluation's upper bound
            "min_depth": 1e-3,  # evaluation: pixels with ground truth in (min_depth, max_depth) count
            "silog_lambda": 0.5,  # the scale-invariant log loss's variance weight (1: fully scale invariant)
            "channels": 32,  # the MIM-depth head's width
            "num_deconv": 3,  # its 2x transposed convolutions; bilinear upsamplings make up the rest of the stride
            "photometric": True,  # training: random gamma, brightness and colour (BTS), half of the images
            "eigen_crop": True,  # evaluation inside the Eigen crop (NYUv2 480x640 frames; scaled for others)
            "flip_test": True,  # evaluation: average with the prediction of the mirrored image
            "eval_stride": 320,  # evaluation windows' step (px) over images larger than model.image_size
        }
    )

    # Semantic segmentation finetuning (task "segment", ADE20K or the synthetic scenes' masks); the shared
    # finetuning keys (eval_examples, eval_batch_size, best_metric) are config.finetune's, the training crop
    # is model.image_size. data.kind "ade20k": data.path holds ADEChallengeData2016 (splits "training" and
    # "validation"; the generic data.train_split / eval_split defaults stand for them).
    c.segmentation = ConfigDict(
        {
            "decoder": None,  # "upernet" (on a ViTDet simple pyramid for ViTs), "semantic_fpn"; None: by tower
            "channels": None,  # the decoder's width (None: UperNet 512, Semantic FPN 128)
            "aux_weight": 0.4,  # the auxiliary FCN head's share of the loss (0: no auxiliary head)
            "label_smoothing": 0.0,
            # Training: mmseg's RandomResize of `scale` (long, short) x a ratio in ratio_range (keep ratio;
            # None scales the image's own size), a crop of model.image_size in which no class covers more than
            # cat_max_ratio (10 tries), flips (data.flip), photometric distortion.
            "scale": (2048, 512),
            "ratio_range": (0.5, 2.0),
            "cat_max_ratio": 0.75,
            "photometric": True,
            # Evaluation: images resized within `scale`, predicted "slide" (windows of model.image_size,
            # eval_stride apart) or "whole", optionally with the flip test; logits resized to each image's
            # original size. Canvases (padded batches of alike sizes) round up to eval_bucket pixels.
            "mode": "slide",
            "eval_stride": 341,
            "flip_test": False,
            "eval_bucket": 128,
        }
    )

    # Instance detection and segmentation finetuning (task "detect": Mask R-CNN, or Cascade Mask R-CNN with
    # three stage_ious), COCO 2017 or the synthetic scenes' instances; the shared finetuning keys
    # (eval_examples, eval_batch_size, best_metric) are config.finetune's, the training and evaluation canvas
    # is model.image_size. data.kind "coco": data.path holds annotations/instances_{train,val}2017.json and
    # the image folders (the generic data.train_split / eval_split stand for train2017 / val2017).
    # Defaults are detectron2's ViTDet Mask R-CNN (clipjax/heads/detection/mask_rcnn.DetectorSettings).
    c.detection = ConfigDict(
        {
            # ViT towers: ViTDet's window attention (0: every block global) except in global_blocks (None:
            # the last block of each quarter of the tower, ViTDet's: (2, 5, 8, 11) for ViT-B).
            "window_size": 14,
            "global_blocks": None,
            "pyramid_channels": 256,
            "stage_ious": (0.5,),  # one box stage per IoU threshold: (0.5, 0.6, 0.7) is Cascade Mask R-CNN
            "anchor_sizes": (32, 64, 128, 256, 512),  # anchor side (px) at pyramid strides 4, 8, 16, 32, 64
            "rpn_convs": 2,  # ViTDet's; the classic FPN RPN head has 1
            "rpn_pre_nms": (2000, 1000),  # proposals per level before NMS (training, inference)
            "rpn_post_nms": (1000, 1000),  # proposals per image after NMS (training, inference)
            "rpn_nms": 0.7,
            "rpn_samples": 256,  # anchors per image that train the RPN, up to rpn_positive_fraction positive
            "rpn_positive_fraction": 0.5,
            "roi_samples": 512,  # RoIs per image that train the box heads, up to roi_positive_fraction positive
            "roi_positive_fraction": 0.25,
            "box_conv_dims": (256, 256, 256, 256),  # ViTDet's 4conv1fc box head; the classic 2fc: () and
            "box_fc_dims": (1024,),  # (1024, 1024)
            "head_norm": True,  # channel LayerNorm in the box and mask heads' convs
            "mask_head_convs": 4,
            "mask_head_channels": 256,
            "box_pool": 7,
            "mask_pool": 14,  # the mask head predicts 2 x mask_pool square masks
            "sampling_ratio": 2,  # RoIAlign's samples per bin side
            "box_loss": "smooth_l1",  # or "giou" (on decoded boxes)
            "smooth_l1_beta": 0.0,  # 0: L1
            # Inference: candidates over score_threshold, the best pre_nms_candidates (box, class) pairs,
            # per-class NMS, the best detections_per_image.
            "score_threshold": 0.05,
            "nms_threshold": 0.5,
            "pre_nms_candidates": 2000,
            "detections_per_image": 100,
            # Training data: large-scale jitter (the image fits model.image_size times a factor in scale_range,
            # then a random crop of model.image_size), flips (data.flip); at most max_instances instances per
            # image, each mask stored inside its box at mask_size x mask_size.
            "scale_range": (0.1, 2.0),
            "max_instances": 100,
            "mask_size": 56,
        }
    )

    # Masked-autoencoder pretraining (task "mae", He et al. 2021) of the image tower config.model describes (a
    # ViT with any stem; MAE's own layout is model.image.layout="mae"): the share of patches removed per image,
    # MAE's normalised-pixel targets, the light decoder, and the evaluation (the reconstruction loss over
    # eval_images held-out images with fixed masks, the first `reconstructions` of them drawn into
    # <workdir>/reconstructions/<step>.png and TensorBoard).
    c.mae = ConfigDict(
        {
            "mask_ratio": 0.75,
            "norm_pix_loss": True,
            "decoder_width": 512,
            "decoder_depth": 8,
            "decoder_heads": 16,
            "decoder_mlp_dim": 2048,
            "eval_images": 256,
            "eval_batch_size": 64,
            "reconstructions": 8,
        }
    )

    # Linear probes of a frozen image tower (task "probe"; config.init names the weights): `task` is what the
    # head predicts ("classify", "segment", "depth", on the data kinds those finetuning tasks read); the
    # tower's features of every image are computed once (no augmentation: the evaluation view) and cached in
    # <workdir>/features/. features: "pooled" or "blocks" (classify: the last n_blocks blocks' CLS + mean
    # patch tokens, DINOv2). The head is fitted with AdamW for `steps` minibatches of `batch_size` for every lr
    # x weight decay of the grid, on the training features less their last `holdout` share, which picks the
    # best. train_examples: the first N training records (None: all; the synthetic scenes'
    # data.synthetic.num_examples). The evaluation reads config.finetune.eval_examples / eval_batch_size;
    # depth's range and loss come from config.depth.
    c.probe = ConfigDict(
        {
            "task": "classify",
            "features": "pooled",
            "n_blocks": 4,
            "lrs": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            "weight_decays": (0.0, 1e-4),
            "steps": 1000,
            "batch_size": 256,
            "holdout": 0.1,
            "train_examples": None,
        }
    )

    # Analyses of saved towers (task "analyze"): kind "attention_distance" (mean attention distance per head
    # and block, clipjax/evals/attention_distance.py) of every weights directory in `inits` (or config.init
    # alone) over the first num_images evaluation images (config.data: synthetic scenes, ImageNet val as tfds
    # or folder), at each checkpoint's resolution, in global batches of batch_size.
    c.analyze = ConfigDict({"kind": "attention_distance", "inits": (), "num_images": 1000, "batch_size": 64})

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
