"""A pretraining run small enough to start, compile and finish in about ten seconds, for process-level
tests (fault injection). Checkpoints every 6 steps and logs every 4, so logging windows straddle
checkpoints."""

from ml_collections import ConfigDict


def get_config(arg=None):
    c = ConfigDict()
    c.batch_size = 16
    c.total_steps = 36
    c.log_every = 4
    c.checkpoint_every = 6
    c.keep_checkpoints = 20
    c.eval_every = 12
    c.progress_bar = False
    c.model = ConfigDict({"name": "vit_ti16", "image_size": 16, "embed_dim": 16})
    c.model.image = ConfigDict({"width": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "patch_size": 8})
    c.model.text = ConfigDict({"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "context_length": 24})
    c.optim = ConfigDict({"lr": 1e-3, "warmup_steps": 4})
    c.data = ConfigDict({"synthetic": {"num_examples": 500, "max_objects": 1}})
    c.eval = ConfigDict({"zeroshot": {"num_examples": 32, "batch_size": 16}})
    return c
