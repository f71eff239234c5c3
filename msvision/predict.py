"""Detections for image files or arrays from a trained model.

Command line::

    python -m msvision.predict --config=configs/X.py --workdir=DIR IMAGES_OR_FOLDERS... --out OUT \\
        [--batch-size N] [--score-threshold S] [--mask-threshold M] [--no-pictures] [--step N] \
        [--config.a.b=v ...]
    python -m msvision.predict --exported model.jaxexport IMAGES_OR_FOLDERS... --out OUT

writes ``OUT/predictions.json``, a list with one entry per readable image, in
input order::

    {"file_name": "imgs/a.jpg", "width": 640, "height": 480, "picture": "a.jpg",
     "detections": [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 18, "category": "dog"}, ...]}

(``bbox`` in pixels of the image as people see it: the EXIF orientation of a photo
stored sideways is applied, and ``width``/``height`` are in that orientation; COCO's
``(x, y, width, height)``;
``category_id`` is the dataset's id, ``category`` its name), one picture per
image with the detections drawn (``picture``; not with ``--no-pictures``), and
``OUT/summary.json`` with the files that were skipped because they could not be
read (``skipped``: ``[{"file_name", "error"}]`` with the reason, e.g. ``"no such file"``,
``"not an image file Pillow can read"``, ``"cannot decode it (Truncated File Read)"``;
also reported on stderr, so ``num_images + len(skipped)`` accounts for every input), the
number of compiled input shapes and the timing.

A model with a segmentation head (``model.seg_head``) adds to each detection its
mask at the image file's size, pasted and thresholded (``p > --mask-threshold``,
0.5) by evaluation's :func:`msvision.evaluation.masks.paste_masks_numpy`:
``"segmentation"``, a COCO RLE ``{"size": [h, w], "counts": str}`` (the format of
evaluation's ``results_<step>.json``), and ``"area"`` (pixels); the pictures blend
the masks. A panoptic config (``data.source='coco_panoptic'``) adds per image the
post-processing of its ``eval.panoptic`` section
(:mod:`msvision.evaluation.panoptic_postprocess`, on all valid detections, as
evaluation): ``"panoptic": {"file_name": "a.png", "segments_info": [{"id",
"category_id", "iscrowd", "isthing", "score", "area", "bbox"}, ...]}``, the PNG in
``OUT/panoptic/`` in COCO panoptic format (id = R + 256·G + 256²·B, 0 = void), and
the pictures show the panoptic map. The classes' ``isthing`` come from
``dataset.json`` (``label_is_thing``, written by ``train.py`` for a panoptic source).

Python (:mod:`msvision.inference`; this module is the command line over it)::

    from msvision.inference import Predictor
    predictor = Predictor.from_workdir("configs/quickstart.py", "runs/quickstart")
    detections = predictor(image)  # image: [H, W, 3] uint8 RGB, any size -> list of dicts as above
    detections = predictor(image, masks="array")  # masks as [H, W] bool arrays ("mask"), not RLEs
    ids, segments_info = predictor.panoptic_segmentation(image)  # panoptic configs

Images of any size are resized as in evaluation (shortest edge
``data.eval_scale``, longest at most ``data.eval_max_size``) and zero-padded
into the smallest configured bucket that holds them (a bucket rounded up to
``data.bucket_divisor`` when none does), so the number of compiled shapes is
bounded by the number of buckets; every layer is padding-aware, so an image's
detections do not depend on its bucket or on the other images of its batch.
Restoring needs the work directory's checkpoint and ``dataset.json`` (the class
list, written by ``train.py``), not the training data.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from msvision import cli, config_sections
from msvision.inference.outputs import DEFAULT_MASK_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from msvision.inference.predictor import Predictor


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, argv, prog="python -m msvision.predict")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m msvision.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files and folders (walked for jpg/jpeg/png/bmp/webp)")
    parser.add_argument("--out", required=True, help="output folder")
    config_sections.add_config_argument(parser, required=False, help="the config file of the trained model")
    parser.add_argument("--workdir", help="work directory of the trained model")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--exported", help="a .jaxexport file (instead of --config/--workdir)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default 1; an export's own batch size)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    parser.add_argument("--mask-threshold", type=float, default=DEFAULT_MASK_THRESHOLD,
                        help="mask probability above which a pixel is foreground (models with a segmentation head)")
    parser.add_argument("--no-pictures", action="store_true", help="write predictions.json only")
    parser.add_argument("--threads", type=int, default=4, help="image decoding threads")
    parser.add_argument("--log-level", default="WARNING")
    cli.add_verbose_flag(parser)
    args = config_sections.parse_args(parser, argv)
    cli.setup_logging(args.log_level)
    from msvision.cache import enable_compilation_cache

    enable_compilation_cache()
    if args.exported:
        if args.config or args.workdir or args.config_overrides:
            parser.error("--exported replaces --config/--workdir")
        predictor = Predictor.from_exported(args.exported, batch_size=args.batch_size,
                                            score_threshold=args.score_threshold,
                                            mask_threshold=args.mask_threshold)
    else:
        if not (args.config and args.workdir):
            parser.error("give --config and --workdir (or --exported)")
        predictor = Predictor.from_workdir(config_sections.config_from_args(args), args.workdir, args.step,
                                           batch_size=args.batch_size or 1,
                                           score_threshold=args.score_threshold,
                                           mask_threshold=args.mask_threshold)
    summary = predictor.predict_files(args.images, args.out, visualize=not args.no_pictures,
                                      num_threads=args.threads)
    print(f"{summary['num_images']} images, {summary['num_detections']} detections with score >= "
          f"{args.score_threshold} (checkpoint step {predictor.step}), {len(summary['skipped'])} skipped, "
          f"{len(summary['compiled_shapes'])} compiled input shapes, {summary['seconds']:.1f} s -> "
          f"{os.path.join(args.out, 'predictions.json')}")
    return 0 if summary["num_images"] or not summary["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
