"""Inference: a trained model on images, live or from a ``jax.export`` artefact.

One job per module:

- :mod:`~msvision.inference.detect`: the inference function
  (``make_detect_function``), images only, shared by live prediction and export;
- :mod:`~msvision.inference.preprocessing`: the evaluation resize and padding into
  buckets (``Preprocessing``, ``pad_images`` → :class:`~msvision.structures.ImageBatch`);
- :mod:`~msvision.inference.outputs`: detections as JSON-ready dicts (COCO RLE masks);
- :mod:`~msvision.inference.panoptic`: panoptic maps of a panoptic config (PNG + segments);
- :mod:`~msvision.inference.predictor`: ``Predictor``, images of any size in, dicts out;
- :mod:`~msvision.inference.files`: prediction on image files (threaded decoding);
- :mod:`~msvision.inference.restore`: a work directory's model (``restore_for_inference``);
- :mod:`~msvision.inference.artefact`: the ``.jaxexport`` file (``save_exported``,
  ``load_exported``);
- :mod:`~msvision.inference.exporter`: ``jax.export`` of the inference function
  (``export_detector``, ``export_workdir``).

The commands are ``python -m msvision.predict`` and ``python -m msvision.export``.
Nothing here imports training (:mod:`msvision.train`); checkpoints are read with
:mod:`msvision.checkpoint`, the class list with :mod:`msvision.data.classes`.
"""

from msvision.inference.detect import make_detect_function
from msvision.inference.predictor import Predictor
from msvision.inference.preprocessing import Preprocessing, pad_images

__all__ = ["Predictor", "Preprocessing", "make_detect_function", "pad_images"]
