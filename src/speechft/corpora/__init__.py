"""Corpus recipes: each turns a corpus (or synthesis) into train/dev/test manifests.

Registry of recipes lives in :mod:`speechft.corpora.registry`; :func:`task_manifests` finds (or
prepares on demand) the manifests of a built-in task.
"""
from .registry import CORPORA, CorpusRecipe, get_corpus, task_manifests

__all__ = ["CORPORA", "CorpusRecipe", "get_corpus", "task_manifests"]
