"""Stable fine-tuning (Speech-FT) and the paper's baselines on one training loop.

    from speechft.finetune import finetune
    finetune("speechft-tiny", "lite-asr", "runs/ft-stable", recipe="stable")

See :mod:`speechft.finetune.run` for the output folder and :mod:`speechft.finetune.recipes` for
the recipes.
"""
from .config import FinetuneConfig, load_config
from .loop import TrainingDiverged
from .model import load_head
from .recipes import RECIPES, get_recipe
from .run import finetune
from .schedule import head_only_steps, tri_stage

__all__ = ["FinetuneConfig", "load_config", "load_head", "RECIPES", "get_recipe", "TrainingDiverged", "finetune",
           "head_only_steps", "tri_stage"]
