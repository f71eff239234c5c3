"""Cost analysis: parameter counts from abstract shapes, FLOPs (MACs) of a conv, the CLI."""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from msvision.analysis import __main__ as cli
from msvision.analysis.cost import abstract_model, compile_cost, count_parameters
from msvision.models.abstract import abstract_init
from msvision.models.layers import Conv2d

TINY_CONFIG = '''
import ml_collections
from msvision.models.build import default_model_config

def get_config():
    config = ml_collections.ConfigDict()
    config.model = default_model_config()
    config.model.num_classes = 3
    config.model.backbone.update(depth=18, width=8)
    config.model.neck.channels = 16
    return config
'''


def test_conv_macs_match_analytic():
    h, w, cin, cout, k = 32, 24, 16, 32, 3
    graphdef, state = nnx.split(abstract_init(lambda: Conv2d(cin, cout, k, use_bias=False, rngs=nnx.Rngs(0))))

    def f(state, x):
        return nnx.merge(graphdef, state)(x)

    abstract_state = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state)
    _, info = compile_cost(f, abstract_state, jax.ShapeDtypeStruct((1, h, w, cin), jnp.float32))
    expected = h * w * cin * cout * k * k
    assert abs(info["macs"] - expected) / expected < 0.05
    assert info["compile_s"] >= 0


@pytest.mark.slow  # the CLI compiles and times a tiny detector: ~35 s of CPU
def test_cli_params_equal_abstract_count(tmp_path, capsys):
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CONFIG)
    args = [f"--config={path}", "--json", "--skip-timing", "--image-size=64", "--config.model.head.subnets.num_convs=2"]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    from msvision.config_sections import load_config

    cfg = load_config(str(path), ["model.head.subnets.num_convs=2"])
    assert report["params"] == count_parameters(abstract_model(cfg.model))
    assert report["params"]["total"] == report["params"]["trainable"] + report["params"]["frozen"]
    assert report["inference"]["macs"] > 0 and report["train"]["macs"] > report["inference"]["macs"]


@pytest.mark.slow  # two DefEncoder analyses (compiles): ~3 min of CPU
def test_remat_model_flops_come_from_the_unrolled_layers():
    """XLA counts a loop body once; the report must give a rematerialized (scanned)
    DefEncoder the FLOPs of the unrolled one, and keep its own memory plan."""
    from msvision.analysis.cost import analyse
    from msvision.models.build import default_model_config, module_config

    def config(remat):
        model = default_model_config()
        model.num_classes = 3
        model.backbone.update(depth=18, width=8)
        model.neck = module_config("neck", "defenc")
        model.neck.update(channels=32, num_layers=3, num_heads=4, num_points=2, ffn_dim=64, remat=remat)
        return model

    reports = [analyse(config(remat), batch_size=1, image_size=96, num_objects=2, skip_timing=True)
               for remat in (False, True)]
    for key in ("inference", "train"):
        assert "flops_from" not in reports[0][key] and reports[1][key]["flops_from"] == "remat=False"
        assert reports[1][key]["flops"] == pytest.approx(reports[0][key]["flops"], rel=1e-3)
    assert reports[1]["params"] == reports[0]["params"]


@pytest.mark.slow  # compiles and runs a tiny detector's inference: ~1 min of CPU
def test_train_step_out_of_memory_keeps_the_report(tmp_path, capsys, monkeypatch):
    """A train step that does not fit (Swin-L at 2×800² on the CPU) is reported, not fatal."""
    from msvision.analysis import cost

    calls = []

    def fake_time(run, iterations):
        calls.append(run)
        if len(calls) == 2:  # the train step, timed after inference
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes.")
        return 0.5

    monkeypatch.setattr(cost, "_time", fake_time)
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CONFIG)
    assert cli.main([f"--config={path}", "--json", "--image-size=64", "--batch-size=1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inference"]["latency_s"] == 0.5
    assert "latency_s" not in report["train"] and "Out of memory" in report["train"]["error"]
    assert report["train"]["temp_size"] > 0  # XLA's plan is still reported
    assert "skipped" in cost.format_report(report)


def test_idconv_taps_are_all_counted():
    """XLA's cost analysis counts a while loop's body once: the IdConv's 9-tap ``lax.scan``
    would show one tap's MACs; ``compile_cost`` traces with the taps unrolled, so it counts
    A · 9 · F_in · F_out for the forward (+ the transposed and weight-gradient products, 2×
    as much again, for the backward), and the scan version stays what training runs."""
    import numpy as np

    from msvision.ops.sps.id_conv import id_conv

    rng = np.random.default_rng(0)
    rois, size, f_in, f_out, active = 2, 8, 16, 24, 40
    table = jnp.asarray(rng.standard_normal((100 + 1, f_in)), jnp.float32).at[-1].set(0)
    id_map = jnp.asarray(rng.integers(0, 100, (rois, size, size)), jnp.int32)
    act_xy = jnp.asarray(rng.integers(0, size, (active, 2)), jnp.int32)
    act_roi = jnp.asarray(rng.integers(0, rois, (active,)), jnp.int32)
    weight = jnp.asarray(rng.standard_normal((9 * f_in, f_out)), jnp.float32)
    bias = jnp.zeros((f_out,), jnp.float32)
    dense = active * 9 * f_in * f_out

    def forward(t, w):
        return id_conv(t, id_map, act_xy, act_roi, w, bias, 3)

    # What the scan hides (a separate function: trace caches outlive the unrolling context).
    scanned = jax.jit(lambda t, w: forward(t, w)).lower(table, weight).compile().cost_analysis()
    scanned = scanned[0] if isinstance(scanned, (list, tuple)) else scanned
    assert scanned["flops"] / 2 < 0.25 * dense, (scanned["flops"] / 2, dense)  # ~ one tap of nine
    _, info = compile_cost(forward, table, weight)
    assert dense <= info["macs"] < 1.2 * dense, (info["macs"], dense)

    grad = jax.grad(lambda t, w: jnp.sum(forward(t, w) ** 2), argnums=(0, 1))
    _, info = compile_cost(grad, table, weight)
    assert 3 * dense <= info["macs"] < 3.6 * dense, (info["macs"], dense)
