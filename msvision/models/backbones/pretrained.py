"""``backbone.pretrained``: load a checkpoint into a backbone, by backbone type.

* :class:`~msvision.models.backbones.resnet.ResNet`: a torchvision ResNet ``.pth``
  (:func:`~msvision.models.backbones.convert_torchvision.load_torchvision_resnet`);
* :class:`~msvision.models.backbones.swin.SwinTransformer`: an official, mmdet or
  torchvision Swin ``.pth`` (:func:`~msvision.models.backbones.convert_swin.load_swin`).
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from msvision.models.backbones.convert_swin import load_swin
from msvision.models.backbones.convert_torchvision import load_torchvision_resnet
from msvision.models.backbones.resnet import ResNet
from msvision.models.backbones.swin import SwinTransformer


def load_pretrained_backbone(backbone, path_or_state_dict: Union[str, Mapping[str, Any]]):
    """Loads ``path_or_state_dict`` into ``backbone`` in place (dispatching on its type) and returns it."""
    if isinstance(backbone, SwinTransformer):
        return load_swin(backbone, path_or_state_dict)
    if isinstance(backbone, ResNet):
        return load_torchvision_resnet(backbone, path_or_state_dict)
    raise TypeError(f"no checkpoint loader for a {type(backbone).__name__} backbone")
