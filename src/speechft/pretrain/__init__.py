"""HuBERT-style self-supervised pre-training: MFCC (or a model layer) -> k-means targets -> masked prediction.

Also "unsupervised fine-tuning": continued pre-training of any encoder on new audio (``init=``).
"""
from .config import PretrainConfig, load_config
from .kmeans import Codebook, FeatureSource
from .mfcc import mfcc
from .model import PretrainHead, span_mask
from .train import pretrain

__all__ = ["PretrainConfig", "load_config", "Codebook", "FeatureSource", "mfcc", "PretrainHead", "span_mask",
           "pretrain"]
