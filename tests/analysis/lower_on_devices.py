"""Subprocess helper for test_lowering.py: ``python -m msvision.analysis`` runs on N forced CPU devices.

Usage: python lower_on_devices.py NUM_DEVICES CASES.json OUT.json
CASES.json is a list of CLI argument lists; OUT.json gets, per case, the exit code,
the JSON report and what went to stderr. One interpreter for all cases (the device
count must be forced before JAX initialises).
"""

import contextlib
import io
import json
import sys

import jax

num_devices, cases_path, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_num_cpu_devices", num_devices)  # before any device is used
jax.config.update("jax_platforms", "cpu")

from msvision.analysis import __main__ as cli  # noqa: E402

results = []
for args in json.load(open(cases_path)):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    results.append(dict(code=code, report=json.loads(stdout.getvalue()), stderr=stderr.getvalue()))
json.dump(results, open(out_path, "w"))
