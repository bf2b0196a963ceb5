"""Figures: attention maps of alpha-F models (SPEC 4.7) and accuracy under continuous input rotations."""

from attentive_gcnn.viz.attention import (
    combined_spatial_attention,
    model_group,
    orientation_vectors,
    rotation_errors,
    spatial_attention_modules,
)
from attentive_gcnn.viz.common import (
    SplitData,
    dataset_names,
    denormalize,
    load_model_checkpoint,
    load_split,
    normalize,
    prepare_output,
    report_user_errors,
    save_figure,
)
from attentive_gcnn.viz.rotations import accuracy_vs_angle, parse_angles, rotate_batch

__all__ = [
    "SplitData",
    "accuracy_vs_angle",
    "combined_spatial_attention",
    "dataset_names",
    "denormalize",
    "load_model_checkpoint",
    "load_split",
    "model_group",
    "normalize",
    "orientation_vectors",
    "parse_angles",
    "prepare_output",
    "report_user_errors",
    "rotate_batch",
    "rotation_errors",
    "save_figure",
    "spatial_attention_modules",
]
