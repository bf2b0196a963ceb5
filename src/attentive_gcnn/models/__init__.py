"""The paper's architectures: one family each, with the group and the attention kind as parameters (and
:class:`PlainP4CNN`, the benchmark's plain-CNN baseline)."""

from attentive_gcnn.models.allcnnc import AllCNNC
from attentive_gcnn.models.authors import convert_state_dict, from_authors_checkpoint
from attentive_gcnn.models.densenet import DenseNet
from attentive_gcnn.models.kit import ATTENTION_KINDS, LayerKit, count_parameters
from attentive_gcnn.models.plain import PlainP4CNN
from attentive_gcnn.models.registry import build, build_from_config, model_config, model_names
from attentive_gcnn.models.resnet import ResNet44
from attentive_gcnn.models.rotmnist import RotMNISTNet

__all__ = [
    "ATTENTION_KINDS",
    "AllCNNC",
    "DenseNet",
    "LayerKit",
    "PlainP4CNN",
    "ResNet44",
    "RotMNISTNet",
    "build",
    "build_from_config",
    "convert_state_dict",
    "count_parameters",
    "from_authors_checkpoint",
    "model_config",
    "model_names",
]
