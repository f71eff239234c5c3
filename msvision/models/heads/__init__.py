"""Task heads: ``losses(pyramid, batch)`` and ``predict(pyramid, batch)``.

One package (or module) per head; a head imports no neck and no other head's modules.
:mod:`.roi_mask` is not a head: it holds the RoI-mask machinery the mask heads share.
"""

from msvision.models.heads.retinanet import RetinaNetHead

__all__ = ["RetinaNetHead"]
