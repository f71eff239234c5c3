"""CUDA artefacts written from this CPU-only machine: one per bucket with a symbolic batch, refused
at call time here; the MSDA Triton kernels in them (``allow_triton``) or not (``--no-triton``).
CPU artefacts of an MSDA model: never the native CPU kernel, which the live model runs."""

import jax
import numpy as np
import pytest
import tiny_defenc_fqdetv2
from flax import nnx

from inference_helpers import CONFIG_OVERRIDES
from msvision import export as export_cli
from msvision.analysis.cost import abstract_model
from msvision.inference import make_detect_function
from msvision.inference.artefact import load_exported
from msvision.inference.exporter import TRITON_TARGET, export_detector, with_msda_impl
from msvision.ops.msda import cpu_ffi


def test_cuda_export_from_cpu_machine(tmp_path, inference_workdir):
    config_arg, workdir, _ = inference_workdir
    out = tmp_path / "cuda.jaxexport"
    assert export_cli.main([f"--config={config_arg}", f"--workdir={workdir}", "--out", str(out),
                            "--platform", "cuda", "--buckets", "128x128,128x256", *CONFIG_OVERRIDES]) == 0
    exported = load_exported(str(out))
    assert exported.platforms == ("cuda",)
    assert sorted(exported.exported) == [(128, 128), (128, 256)]
    for (h, w), e in exported.exported.items():
        assert e.platforms == ("cuda",)  # as read back from the serialised module
        assert str(e.in_avals[-3].shape) == f"(b, {h}, {w}, 3)"
    images = np.zeros((1, 128, 128, 3), np.uint8)
    sizes = np.array([[128, 128]], np.int32)
    with pytest.raises(ValueError, match="cuda"):  # not runnable here: the platform is checked on call
        exported(images, sizes, sizes)


def test_cuda_export_of_an_msda_model_with_and_without_triton():
    # No weights needed: the export takes shapes only (nnx.eval_shape model).
    config = tiny_defenc_fqdetv2.get_config()
    graphdef, params, rest = nnx.split(abstract_model(config.model), nnx.Param, ...)
    triton = export_detector(graphdef, params, rest, [(64, 64)], batch_size=2, platforms=("cuda",))[(64, 64)]
    restored = jax.export.deserialize(triton.serialize())
    assert restored.platforms == ("cuda",) and restored.in_avals[-3].shape == (2, 64, 64, 3)
    text = restored.mlir_module()
    assert text.count(TRITON_TARGET) == tiny_defenc_fqdetv2.MSDA_LAYERS  # msda_impl "auto" on CUDA
    assert "msda_forward" in text
    # Pallas blocks cannot follow a symbolic batch: the error says what to do instead.
    with pytest.raises(ValueError, match="--batch-size N"):
        export_detector(graphdef, params, rest, [(64, 64)], platforms=("cuda",))
    # Built with XLA MSDA: no Triton call, so jax.export's safety check stays on, and the batch can be symbolic.
    xla_model = abstract_model(with_msda_impl(config, "xla").model)
    stable = export_detector(*nnx.split(xla_model, nnx.Param, ...), [(64, 64)], platforms=("cuda",),
                             allow_triton=False)[(64, 64)]
    assert TRITON_TARGET not in stable.mlir_module()
    assert str(stable.in_avals[-3].shape) == "(b, 64, 64, 3)"
    assert jax.export.deserialize(stable.serialize()).out_avals[0].shape[1:] == restored.out_avals[0].shape[1:]


def test_cpu_export_of_an_msda_model_has_no_native_kernel():
    """The live model lowers MSDA for the CPU to the native kernel (when it is available); the
    export lowers it to XLA, so ``jax.export``'s custom-call check passes and the artefact runs
    where no compiler is (see the ``msvision.inference.exporter`` docstring)."""
    config = tiny_defenc_fqdetv2.get_config()
    graphdef, params, rest = nnx.split(abstract_model(config.model), nnx.Param, ...)
    leaves, treedef = jax.tree.flatten((params, rest))
    args = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves], jax.ShapeDtypeStruct((2, 64, 64, 3), np.uint8),
            jax.ShapeDtypeStruct((2, 2), np.int32), jax.ShapeDtypeStruct((2, 2), np.int32))
    live = jax.jit(make_detect_function(graphdef, treedef)).trace(*args).lower(lowering_platforms=("cpu",))
    expected = tiny_defenc_fqdetv2.MSDA_LAYERS if cpu_ffi.available() else 0
    assert live.as_text().count(f"custom_call @{cpu_ffi.FORWARD_TARGET}") == expected
    exported = export_detector(graphdef, params, rest, [(64, 64)], batch_size=2, platforms=("cpu",))[(64, 64)]
    text = jax.export.deserialize(exported.serialize()).mlir_module()
    assert "msvision_msda_cpu" not in text and "stablehlo.gather" in text
    # A symbolic batch too: the Triton branch (which refuses one) is not traced for a CPU export
    symbolic = export_detector(graphdef, params, rest, [(64, 64)], batch_size=None, platforms=("cpu",))[(64, 64)]
    text = jax.export.deserialize(symbolic.serialize()).mlir_module()
    assert TRITON_TARGET not in text and "msvision_msda_cpu" not in text
