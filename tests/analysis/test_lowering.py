"""``python -m msvision.analysis --lower-for=...``: sharded train and inference steps lowered on 8 forced CPU devices.

Test-size models (the quickstart RetinaNet of ``tests/train/tiny_config.py``, and
R-18 + DefEnc-P3 + FQDetV2 shrunk from ``configs/fqdet/r50_defenc_p3_fqdetv2.py``)
(``tests/tiny_defenc_fqdetv2.py``) with the default MSDA selection (``impl="auto"``), lowered for CUDA and for the CPU
in one subprocess (the device count must be forced before JAX initialises): Triton kernels for CUDA, the
native CPU kernel for the CPU when it is available (``MSVISION_MSDA_NATIVE=off``: XLA).
"""

import json
import os
import subprocess
import sys

import pytest

from tiny_defenc_fqdetv2 import MSDA_LAYERS

HERE = os.path.dirname(__file__)
ROOT = os.path.join(HERE, "..", "..")
QUICKSTART = os.path.join(HERE, "..", "train", "tiny_config.py")
DEFENC = os.path.join(HERE, "..", "tiny_defenc_fqdetv2.py")
COMMON = ["--json", "--devices=8", "--image-size=96", "--num-objects=3"]
CASES = {
    "quickstart_cuda": [f"--config={QUICKSTART}", "--lower-for=cuda", *COMMON],
    "quickstart_cpu": [f"--config={QUICKSTART}", "--lower-for=cpu", *COMMON],
    "quickstart_bf16_cuda": [f"--config={QUICKSTART}", "--config.model.dtype=bfloat16", "--lower-for=cuda", *COMMON],
    "quickstart_bf16_cpu": [f"--config={QUICKSTART}", "--config.model.dtype=bfloat16", "--lower-for=cpu", *COMMON],
    "defenc_cuda": [f"--config={DEFENC}", "--lower-for=cuda", *COMMON],
    "defenc_cpu": [f"--config={DEFENC}", "--lower-for=cpu", *COMMON],
}
TRITON = "__gpu$xla.gpu.triton"
ONEDNN = "msvision_onednn"  # the oneDNN convolution custom calls (msvision.ops.onednn)
NATIVE_CPU = "msvision_msda_cpu_"  # the native CPU MSDA kernel's custom calls (forward, backward)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lowering")
    cases, out = tmp / "cases.json", tmp / "out.json"
    cases.write_text(json.dumps(list(CASES.values())))
    env = dict(os.environ, JAX_PLATFORMS="cpu", MSVISION_KERNEL_SELFCHECK="auto")
    subprocess.run([sys.executable, os.path.join(HERE, "lower_on_devices.py"), "8", str(cases), str(out)],
                   check=True, env=env, timeout=600)
    return dict(zip(CASES, json.loads(out.read_text())))


def _ok(result):
    lowering = result["report"]["lowering"]
    assert result["code"] == 0, result["stderr"]
    assert lowering["train_ok"] and lowering["inference_ok"] and "errors" not in lowering
    assert lowering["devices"] == 8 and lowering["batch_size"] == 16
    assert lowering["num_partitions"] == {"train": 8, "inference": 8}
    return lowering


@pytest.mark.slow  # the fixture's subprocess lowers six train steps: ~60 s of CPU
def test_quickstart_lowers_for_cuda_with_xla_kernel_gradients(results):
    cuda, cpu = _ok(results["quickstart_cuda"]), _ok(results["quickstart_cpu"])
    assert cuda["platform"] == "cuda" and cpu["platform"] == "cpu"
    for lowering in (cuda, cpu):
        assert TRITON not in lowering["custom_calls"]["train"] and lowering["lowering_s"]["train"] > 0
    # The CPU-only im2col kernel gradients are matmuls; for CUDA every kernel gradient
    # is XLA's convolution: more convolutions in the train step, the same in inference.
    assert cuda["convolutions"]["train"] > cpu["convolutions"]["train"]
    assert cuda["convolutions"]["inference"] == cpu["convolutions"]["inference"]
    assert results["quickstart_cuda"]["report"]["params"]["total"] > 0


@pytest.mark.slow  # the fixture's subprocess lowers six train steps: ~60 s of CPU
def test_bfloat16_quickstart_lowers_for_cuda_and_takes_onednn_only_on_the_cpu(results):
    """The mixed-precision train step lowers for CUDA as the float32 one does, with XLA's
    convolutions; for the CPU its convolutions are oneDNN's custom calls where this CPU
    has native bfloat16 convolutions (the default for bfloat16) and XLA's elsewhere."""
    from msvision.ops.onednn import ffi

    cuda, cpu = _ok(results["quickstart_bf16_cuda"]), _ok(results["quickstart_bf16_cpu"])
    f32_cuda = _ok(results["quickstart_cuda"])
    for key in ("train", "inference"):
        assert not any(t.startswith(ONEDNN) for t in cuda["custom_calls"][key])
        assert cuda["convolutions"][key] == f32_cuda["convolutions"][key]
    native = ffi.available() and ffi.native_bfloat16()
    onednn_calls = sum(n for t, n in cpu["custom_calls"]["train"].items() if t.startswith(ONEDNN))
    assert (onednn_calls > 0) == native, cpu["custom_calls"]["train"]
    if native:  # every convolution of the train step went to oneDNN: none of XLA's is left
        assert cpu["convolutions"]["train"] == 0


@pytest.mark.slow  # the fixture's subprocess lowers six train steps: ~60 s of CPU
def test_defenc_fqdetv2_lowers_the_msda_triton_kernel_for_cuda_only(results):
    cuda, cpu = _ok(results["defenc_cuda"]), _ok(results["defenc_cpu"])
    msda_layers = MSDA_LAYERS  # one MSDA per encoder and decoder layer
    assert cuda["custom_calls"]["train"][TRITON] == 2 * msda_layers
    assert cuda["triton_kernels"]["train"] == {"msda_forward": msda_layers, "msda_backward": msda_layers}
    assert cuda["triton_kernels"]["inference"] == {"msda_forward": msda_layers}
    for key in ("train", "inference"):
        assert TRITON not in cpu["custom_calls"][key] and cpu["triton_kernels"][key] == {}
        assert not any(target.startswith(NATIVE_CPU) for target in cuda["custom_calls"][key])


@pytest.mark.slow  # the fixture's subprocess lowers six train steps: ~60 s of CPU
def test_defenc_fqdetv2_lowers_the_native_msda_kernel_for_the_cpu_when_available(results):
    from msvision.ops.msda import cpu_ffi

    cpu = _ok(results["defenc_cpu"])
    # The subprocess has this process's environment (MSVISION_MSDA_NATIVE, compiler, cache).
    layers = MSDA_LAYERS if cpu_ffi.available() else 0
    native = {k: {t: n for t, n in calls.items() if t.startswith(NATIVE_CPU)} for k, calls in cpu["custom_calls"].items()}
    expected_train = {cpu_ffi.FORWARD_TARGET: layers, cpu_ffi.BACKWARD_TARGET: layers} if layers else {}
    assert native == {"train": expected_train, "inference": {cpu_ffi.FORWARD_TARGET: layers} if layers else {}}


def test_a_function_that_fails_to_lower_is_reported():
    """Hungarian matching is a ``jax.pure_callback``, which lowers only for this host's platform."""
    import jax
    import numpy as np

    from msvision.analysis.lowering import _lower

    def with_callback(x):
        return jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    x = jax.ShapeDtypeStruct((3,), np.float32)
    assert _lower(jax.jit(with_callback), (x,), "cpu")["ok"]
    failed = _lower(jax.jit(with_callback), (x,), "cuda")
    assert not failed["ok"] and "different from the lowering platform cuda" in failed["error"]


def test_cli_prints_the_error_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    from msvision.analysis import __main__ as cli

    path = tmp_path / "tiny.py"
    path.write_text("from msvision.models.build import default_model_config\n"
                    "import ml_collections\n"
                    "def get_config():\n"
                    "    return ml_collections.ConfigDict(dict(model=default_model_config()))\n")
    report = dict(platform="cuda", devices=1, train_ok=False, inference_ok=True, errors={"train": "Boom: x"},
                  custom_calls={}, num_partitions={"train": None, "inference": 1},
                  lowering_s={"train": 0.1, "inference": 0.2})
    monkeypatch.setattr(cli, "lower_config", lambda *a, **k: report)
    monkeypatch.setattr(cli, "abstract_model", lambda model_cfg: None)
    monkeypatch.setattr(cli, "count_parameters", lambda model: {})
    assert cli.main([f"--config={path}", "--lower-for=cuda", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["lowering"] == report
    assert "error: train step failed to lower for cuda: Boom: x" in err
