"""Shared detection math as pure JAX functions: ``boxes``, ``anchors``, ``matching``,
``nms``, ``losses`` (and ``msda``). Import the submodules directly, e.g.
``from msvision.ops.boxes import box_iou``."""
