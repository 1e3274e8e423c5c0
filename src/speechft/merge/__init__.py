"""Weight-space merging: Speech-FT interpolation, multi-model merges, α sweeps (streaming, exact).

Library entry points:

* :func:`merge_models`  θ₀ + fine-tuned models -> one merged HF directory
* :func:`merge_alphas`  several α written in one pass over the inputs
* :func:`run_sweep`     merge at each α, probe on tasks, record, plot, select (``speechft.merge.sweep``)
* :data:`METHODS`       the merge-method registry (``linear``, ``task_arithmetic``, ``ties``, ``dare``, ``dare_ties``)
"""
from .merge import merge_alphas, merge_models, resolve_model_dir
from .methods import METHODS, MergeMethod, MergeParams, get_method

__all__ = ["METHODS", "MergeMethod", "MergeParams", "get_method", "merge_alphas", "merge_models", "resolve_model_dir"]
