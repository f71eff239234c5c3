"""Backbones: normalised images in, ``{level: feature}`` out."""

from msvision.models.backbones.convert_swin import load_swin
from msvision.models.backbones.convert_torchvision import load_torchvision_resnet
from msvision.models.backbones.pretrained import load_pretrained_backbone
from msvision.models.backbones.resnet import ResNet
from msvision.models.backbones.swin import SwinTransformer

__all__ = ["ResNet", "SwinTransformer", "load_pretrained_backbone", "load_swin", "load_torchvision_resnet"]
