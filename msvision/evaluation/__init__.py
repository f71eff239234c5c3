"""Evaluation (thesis section 2.3).

- ``coco_eval``: COCO box / mask / boundary AP through pycocotools.
- ``boundary``: mask boundaries and the Boundary IoU; ``coco_boundary``: COCO-style Boundary AP.
- ``lvis``, ``lvis_eval``: cocofied LVIS and the LVIS-rule AP* / AP^B* (``python -m msvision.evaluation.lvis``).
- ``panoptic``: Panoptic Quality PQ / SQ / RQ (``python -m msvision.evaluation.panoptic``).
- ``evaluators``: one evaluator per metric (``process()`` / ``evaluate()``, as detectron2's
  ``DatasetEvaluator``) over the outputs of the evaluation loop; ``eval_writers``: its files and pictures.
- ``visualize``: drawing.
"""
