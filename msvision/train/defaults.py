"""Defaults of the ``train`` and ``eval`` config sections (documented in ``loop.py``)."""

import dataclasses

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            num_steps=0,
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=3,
            eval_every=0,
            eval_at_end=True,
            async_checkpoint=True,
            init_from="",
            init_parts=("backbone", "neck", "head"),
        )
    )


def default_eval_config() -> ml_collections.ConfigDict:
    # box_mask_baseline: with a segmentation head, also score the predicted boxes filled as
    # masks (``box_as_mask/...`` metrics), the reference a mask head has to beat.
    # boundary_ap: with a segmentation head, also the mask AP with the Boundary IoU
    # (``boundary/AP``, …; msvision.evaluation.coco_boundary; costs a pass over every mask).
    # panoptic: the post-processing of a panoptic dataset (data.source='coco_panoptic'),
    # the fields of msvision.evaluation.panoptic_postprocess.PanopticPostProcess.
    from msvision.evaluation.panoptic_postprocess import PanopticPostProcess

    return ml_collections.ConfigDict(dict(visualize=8, box_mask_baseline=False, boundary_ap=False,
                                          panoptic=dataclasses.asdict(PanopticPostProcess())))
