"""Backbones: normalised images in, ``{level: feature}`` out."""

from msvision.models.backbones.convert_torchvision import load_torchvision_resnet
from msvision.models.backbones.resnet import ResNet

__all__ = ["ResNet", "load_torchvision_resnet"]
