"""Equivariant layers on p4 / p4m: convolutions, pooling, batch norm and attention."""

from attentive_gcnn.nn.attention import (
    AttGConv,
    AttGroupConv,
    AttLiftingConv,
    FAttGConv,
    FAttGroupConv,
    FAttLiftingConv,
    FeatureChannelAttention,
    FeatureSpatialAttention,
    FullChannelAttention,
    FullSpatialAttention,
    attend,
    attention_maps,
)
from attentive_gcnn.nn.conv import GConv, GroupConv, LiftingConv, export_conv2d, transformed_filters
from attentive_gcnn.nn.equivariance import check_equivariance, equivariance_errors
from attentive_gcnn.nn.norm import GroupBatchNorm
from attentive_gcnn.nn.pooling import GroupPool, SpatialPool

__all__ = [
    "AttGConv",
    "AttGroupConv",
    "AttLiftingConv",
    "FAttGConv",
    "FAttGroupConv",
    "FAttLiftingConv",
    "FeatureChannelAttention",
    "FeatureSpatialAttention",
    "FullChannelAttention",
    "FullSpatialAttention",
    "GConv",
    "GroupBatchNorm",
    "GroupConv",
    "GroupPool",
    "LiftingConv",
    "SpatialPool",
    "attend",
    "attention_maps",
    "check_equivariance",
    "equivariance_errors",
    "export_conv2d",
    "transformed_filters",
]
