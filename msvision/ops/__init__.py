"""Shared detection math as pure JAX functions: ``boxes``, ``anchors``, ``matching``,
``nms``, ``losses``, ``queries``, ``roi_align``, ``bilinear`` (corner weights shared by RoIAlign
and MSDA), ``padding`` (padding-aware resizing and masks), ``conv``/``conv_xla`` (the
convolution and its implementations), the packages ``msda``, ``sps``, ``onednn``, and the
kernel plumbing ``platforms``, ``native_build``, ``kernel_selfcheck``. Import the submodules directly, e.g.
``from msvision.ops.boxes import box_iou``."""
