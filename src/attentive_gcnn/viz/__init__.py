"""Figures: attention maps of alpha-F and full-attention models, accuracy under input rotations."""

from attentive_gcnn.viz.attention import (
    combined_full_attention,
    combined_spatial_attention,
    full_spatial_attention_maps,
    full_spatial_attention_modules,
    model_group,
    orientation_grid,
    orientation_vectors,
    rotation_errors,
    spatial_attention_modules,
    spatial_map_kind,
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
    "combined_full_attention",
    "combined_spatial_attention",
    "dataset_names",
    "denormalize",
    "full_spatial_attention_maps",
    "full_spatial_attention_modules",
    "load_model_checkpoint",
    "load_split",
    "model_group",
    "normalize",
    "orientation_grid",
    "orientation_vectors",
    "parse_angles",
    "prepare_output",
    "report_user_errors",
    "rotate_batch",
    "rotation_errors",
    "save_figure",
    "spatial_attention_modules",
    "spatial_map_kind",
]
