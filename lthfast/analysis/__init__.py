"""Ticket science: AP breakdowns (object size, category frequency, difficulty), mask
overlap and early-bird stability, per-layer structure, perturbation tests and
layer-wise vs global pruning. Each analysis returns plain data (dicts / lists of
dicts); each `plot_*` returns a base64 PNG (matplotlib Agg). `lthfast report`
puts them on one HTML page."""
from lthfast.analysis.ap_breakdown import (ap_by_difficulty, ap_by_frequency, ap_by_size,
                                           plot_ap_by_category, plot_ap_by_size,
                                           training_category_counts)
from lthfast.analysis.layers import layer_stats, plot_layer_stats
from lthfast.analysis.layerwise import (compare_tickets, layerwise_vs_global, masks_at,
                                        plot_layerwise_vs_global)
from lthfast.analysis.overlap import (early_bird, early_bird_iterations, mask_overlap,
                                      plot_early_bird, plot_early_bird_iterations,
                                      plot_overlap_layers, random_iou)
from lthfast.analysis.perturb import (complement, perturbation, perturbed, random_mask,
                                      retrain_perturbed, swap_mask)
from lthfast.analysis.runs import Run, RunError, RunningWarning, load_run

__all__ = ["ap_by_size", "ap_by_frequency", "ap_by_difficulty", "training_category_counts",
           "plot_ap_by_size", "plot_ap_by_category", "layer_stats", "plot_layer_stats",
           "layerwise_vs_global", "compare_tickets", "masks_at", "plot_layerwise_vs_global",
           "mask_overlap", "early_bird", "early_bird_iterations",
           "plot_early_bird_iterations", "random_iou", "plot_early_bird", "plot_overlap_layers",
           "perturbation", "retrain_perturbed", "complement", "random_mask", "swap_mask",
           "perturbed", "Run", "RunError", "RunningWarning", "load_run"]
