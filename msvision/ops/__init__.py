"""Shared detection math as pure JAX functions: ``boxes``, ``anchors``, ``matching``,
``nms``, ``losses``, ``roi_align`` (and the packages ``msda``, ``sps``). Import the submodules directly, e.g.
``from msvision.ops.boxes import box_iou``."""
