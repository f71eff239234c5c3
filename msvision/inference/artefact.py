"""The ``.jaxexport`` file: the inference function serialised with ``jax.export``.

A ``.jaxexport`` file is an ``.npz`` (zip) archive holding

- ``manifest``: JSON (as ``uint8`` bytes): format and version, the class list
  (``class_names``, ``label_to_category``, for a panoptic config ``label_is_thing``,
  as in ``WORKDIR/dataset.json``), the evaluation resize (``eval_scale``,
  ``eval_max_size``), the bucket shapes, the batch size (``null`` = symbolic), the
  platforms, the checkpoint step and the resolved config (``Predictor.from_exported``
  reads its ``data.source`` and ``eval.panoptic``: a panoptic export predicts panoptic
  maps too);
- ``weights_00000``, …: the flat leaves of the model's ``(params, rest)``;
- ``bucket_<H>x<W>``: one serialised :class:`jax.export.Exported` per bucket shape,
  the function ``(weights, images [B, H, W, 3] uint8, image_sizes [B, 2] int32,
  orig_sizes [B, 2] int32) -> {"boxes", "scores", "labels", "valid"}`` (+ ``"masks"
  [B, K, S, S]`` float32 probabilities on ``"mask_boxes" [B, K, 4]`` for a model with a
  segmentation head) of :func:`msvision.inference.detect.make_detect_function`, with a
  symbolic batch dimension ``B`` by default (a static one if exported so).

:func:`save_exported` writes one (:mod:`msvision.inference.exporter` makes the
functions); :func:`load_exported` gives back a callable that needs neither the config
nor the model code's Python (only ``jax``). Serialisation needs the ``flatbuffers``
package (a dependency of msvision).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax import export as jax_export

from msvision.data.batching import Bucket
from msvision.data.classes import ClassList
from msvision.inference.preprocessing import Preprocessing

FORMAT = "msvision.jaxexport"
VERSION = 1


def save_exported(path: str, exported: dict[Bucket, jax_export.Exported], weights: Sequence[Any],
                  classes: ClassList, preprocessing: Preprocessing, *, batch_size: Optional[int],
                  step: Optional[int] = None, config: Optional[dict] = None) -> dict:
    """Writes a ``.jaxexport`` archive (see the module docstring); returns its manifest."""
    platforms = sorted({p for e in exported.values() for p in e.platforms})
    manifest = dict(
        format=FORMAT, version=VERSION, **classes.to_json(),
        eval_scale=preprocessing.eval_scale, eval_max_size=preprocessing.eval_max_size,
        buckets=[list(b) for b in exported], bucket_divisor=preprocessing.bucket_divisor,
        batch_size=batch_size, platforms=platforms, step=step, jax_version=jax.__version__, config=config,
    )
    arrays = {"manifest": np.frombuffer(json.dumps(manifest, default=str).encode(), np.uint8)}
    for i, w in enumerate(weights):
        w = np.asarray(w)
        if w.dtype.kind not in "biuf" or w.dtype.itemsize > 8 or str(w.dtype) == "bfloat16":
            raise TypeError(f"weight {i} has dtype {w.dtype}, which .npz cannot store")
        arrays[f"weights_{i:05d}"] = w
    for (h, w), e in exported.items():
        arrays[f"bucket_{h}x{w}"] = np.frombuffer(bytes(e.serialize()), np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # np.savez on a path would append ".npz"
        np.savez(f, **arrays)
    return manifest


@dataclasses.dataclass
class ExportedDetector:
    """A deserialised ``.jaxexport``: ``detector(images, image_sizes, orig_sizes) -> dict of numpy arrays``.

    Attributes:
      exported: ``{(H, W): jax.export.Exported}``.
      weights: the weight leaves (device arrays), passed to every call.
      classes, preprocessing: class list; resize and buckets (fixed: an image
        larger than every bucket is shrunk into the largest).
      batch_size: static batch size, ``None`` if symbolic.
      platforms: what the functions were lowered for.
      step: checkpoint step; manifest: the whole manifest.
    """

    exported: dict[Bucket, jax_export.Exported]
    weights: list
    classes: ClassList
    preprocessing: Preprocessing
    batch_size: Optional[int]
    platforms: tuple[str, ...]
    step: Optional[int]
    manifest: dict
    _calls: dict = dataclasses.field(default_factory=dict, repr=False)

    def __call__(self, images, image_sizes, orig_sizes) -> dict[str, np.ndarray]:
        """Runs the export of bucket ``images.shape[1:3]`` (arguments as in
        :func:`msvision.inference.detect.make_detect_function`)."""
        bucket = tuple(int(v) for v in np.shape(images)[1:3])
        if bucket not in self.exported:
            raise ValueError(f"no export for images of shape {bucket}; exported buckets: {sorted(self.exported)}")
        if bucket not in self._calls:
            self._calls[bucket] = jax.jit(self.exported[bucket].call)
        return jax.device_get(self._calls[bucket](self.weights, images, image_sizes, orig_sizes))


def load_exported(path: str) -> ExportedDetector:
    """Reads a ``.jaxexport`` archive written by :func:`save_exported`."""
    with open(path, "rb") as f:
        archive = np.load(io.BytesIO(f.read()), allow_pickle=False)
    manifest = json.loads(archive["manifest"].tobytes().decode())
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version <= {VERSION} ({manifest.get('format')!r}, "
                         f"version {manifest.get('version')})")
    names = sorted(k for k in archive.files if k.startswith("weights_"))
    weights = [jax.device_put(archive[k]) for k in names]
    exported = {}
    for h, w in manifest["buckets"]:
        exported[(int(h), int(w))] = jax_export.deserialize(bytearray(archive[f"bucket_{h}x{w}"].tobytes()))
    preprocessing = Preprocessing(int(manifest["eval_scale"]), int(manifest["eval_max_size"]),
                                  tuple(exported), int(manifest["bucket_divisor"]), allow_new_buckets=False)
    classes = ClassList.from_json(manifest)
    return ExportedDetector(exported, weights, classes, preprocessing, manifest["batch_size"],
                            tuple(manifest["platforms"]), manifest["step"], manifest)
