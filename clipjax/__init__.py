"""clipjax: CLIP pretraining and dense-prediction finetuning in JAX/Flax."""

__version__ = "0.1.0"
