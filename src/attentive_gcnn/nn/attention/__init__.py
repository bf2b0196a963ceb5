"""Attention inside group convolutions: full (alpha), feature-map (alpha-F) and RomHog variants."""

from attentive_gcnn.nn.attention.combine import COMBINES, KeepsMap, attend, attention_maps
from attentive_gcnn.nn.attention.feature import (
    FAttGConv,
    FAttGroupConv,
    FAttLiftingConv,
    FeatureChannelAttention,
    FeatureSpatialAttention,
)
from attentive_gcnn.nn.attention.full import (
    AttGConv,
    AttGroupConv,
    AttLiftingConv,
    FullChannelAttention,
    FullSpatialAttention,
)

__all__ = [
    "COMBINES",
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
    "KeepsMap",
    "attend",
    "attention_maps",
]
