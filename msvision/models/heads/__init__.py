"""Task heads: ``losses(pyramid, batch)`` (a training :class:`~msvision.structures.Batch`) and
``predict(pyramid, inputs)`` (an :class:`~msvision.structures.ImageBatch`: images only); the
protocols and the capabilities every head declares are in :mod:`msvision.models.interfaces`.

One package (or module) per head; a head imports no neck and no other head's modules.
:mod:`.roi_mask` is not a head: it holds the RoI-mask machinery the mask heads share.
"""

from msvision.models.heads.retinanet import RetinaNetHead

__all__ = ["RetinaNetHead"]
