"""Evaluation: COCO AP through pycocotools (``coco_eval``) and drawing (``visualize``)."""
