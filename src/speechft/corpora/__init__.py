"""Corpus recipes: each turns a corpus (or synthesis) into train/dev/test manifests.

Registry of recipes lives in :mod:`speechft.corpora.registry`; :func:`task_manifests` finds (or
prepares on demand) the manifests of a built-in task.
"""
from .registry import RECIPES, get_recipe, task_manifests

__all__ = ["RECIPES", "get_recipe", "task_manifests"]
