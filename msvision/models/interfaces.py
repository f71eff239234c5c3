"""What the :class:`~msvision.models.detector.Detector` calls on its heads.

The heads implement these protocols structurally (no base class) and declare their
capabilities as class attributes, which the builder and the detector read directly;
nothing probes a head's methods or signatures:

- a detection head sets ``provides_queries``: True when it is a
  :class:`QueryDetectionHead` (FQDet), whose queries, boxes and matches a segmentation
  head reads; False otherwise (RetinaNet), and the builder refuses a segmentation head;
- a segmentation head sets ``class_specific``: True when it predicts one mask per class
  (the ++ baselines), so the builder passes it ``num_classes``; False for class-agnostic
  masks (EffSeg).

Every segmentation head's ``losses`` takes ``rng``, a key for training-time randomness
(PointRend++'s point sampling): the detector passes one during training and None
otherwise; a head without randomness ignores it.

``tests/models/test_interfaces.py`` checks that every head registered in
:mod:`msvision.models.build` declares its attributes and that they match its methods and
constructor.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Protocol

import jax

from msvision.structures import Batch, Detections, ImageBatch, QueryOutputs

Array = jax.Array


class DetectionHead(Protocol):
    """A detection head (``model.head``): pyramid → losses or detections.

    ``pyramid``: ``{level: [B, H_l, W_l, D]}``, the neck's output.
    """

    provides_queries: ClassVar[bool]  # True: a QueryDetectionHead

    def losses(self, pyramid: dict[int, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
        """``(loss, {name: scalar})`` of a training batch."""
        ...

    def predict(self, pyramid: dict[int, Array], inputs: ImageBatch) -> Detections:
        """Detections in padded-input pixels (``inputs``: images only)."""
        ...


class QueryDetectionHead(DetectionHead, Protocol):
    """A detection head whose queries can feed a :class:`SegmentationHead` (FQDet)."""

    def losses_with_queries(self, pyramid: dict[int, Array], batch: Batch
                            ) -> tuple[Array, dict[str, Array], QueryOutputs]:
        """:meth:`losses` and the final queries with their boxes and matches."""
        ...

    def predict_with_queries(self, pyramid: dict[int, Array], inputs: ImageBatch
                             ) -> tuple[Detections, QueryOutputs]:
        """:meth:`predict` and the final queries with each detection's query."""
        ...


class SegmentationHead(Protocol):
    """A mask head (``model.seg_head``, thesis chapter 5) on a :class:`QueryDetectionHead`."""

    class_specific: ClassVar[bool]  # True: one mask per class; the builder passes num_classes

    def losses(self, pyramid: dict[int, Array], batch: Batch, queries: QueryOutputs,
               rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
        """``(loss, {name: scalar})`` of the matched queries; ``rng``: a key for training-time
        randomness (None: a fixed key; ignored by heads without randomness)."""
        ...

    def predict(self, pyramid: dict[int, Array], inputs: ImageBatch, dets: Detections,
                queries: QueryOutputs) -> Detections:
        """``dets`` with ``masks [B, K, S, S]`` probabilities on ``mask_boxes [B, K, 4]``, re-scored
        and re-sorted."""
        ...


__all__ = ["DetectionHead", "QueryDetectionHead", "SegmentationHead"]
