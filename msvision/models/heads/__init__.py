"""Task heads: ``losses(pyramid, batch)`` and ``predict(pyramid, batch)``."""

from msvision.models.heads.retinanet import RetinaNetHead

__all__ = ["RetinaNetHead"]
