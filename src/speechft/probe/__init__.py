"""SUPERB-style probing: frozen encoder, cached features of all layers, a head per task, SUPERB score.

    run_probe(model, tasks, out_dir, seeds=(0,), size="default", ...) -> list[record]
    superb_score(values_or_records, fbank=None, model=None) -> {"score", "tasks", "missing"}
"""
from .report import format_table, plot_layer_weights, write_reports, write_summary
from .runner import RESULTS_FILE, default_tasks, extract_features, run_probe
from .score import OFFICIAL, normalized_score, score_table, superb_score

__all__ = [
    "OFFICIAL",
    "RESULTS_FILE",
    "default_tasks",
    "extract_features",
    "format_table",
    "normalized_score",
    "plot_layer_weights",
    "run_probe",
    "score_table",
    "superb_score",
    "write_reports",
    "write_summary",
]
