"""Tasks: each is a `run(config, workdir, mesh) -> summary metrics` built on the shared train loop."""

from clipjax.tasks import depth, detect, evaluate, finetune, pretrain, segment

TASKS = {
    "pretrain": pretrain.run,
    "evaluate": evaluate.run,
    "finetune": finetune.run,
    "depth": depth.run,
    "segment": segment.run,
    "detect": detect.run,
}
