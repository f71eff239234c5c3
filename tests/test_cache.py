"""train.py / eval.py / predict.py keep compiled steps in $MSVISION_CACHE/xla (msvision.cache)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os, jax
from msvision.cache import enable_compilation_cache
path = enable_compilation_cache()
print(path)
if path:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()
"""


def _run(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
               and k != "MSVISION_COMPILATION_CACHE"}
    environ.update(MSVISION_CACHE=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=environ, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_compiled_functions_are_stored_under_msvision_cache(tmp_path):
    path = _run(tmp_path)
    assert path == str(tmp_path / "xla")
    assert os.listdir(path), "nothing was written to the compilation cache"


def test_turned_off_or_left_to_jax_settings(tmp_path):
    assert _run(tmp_path, MSVISION_COMPILATION_CACHE="off") == "None"
    other = tmp_path / "mine"
    assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(other)) == "None"  # the user's directory stays
    assert not (tmp_path / "xla").exists()
