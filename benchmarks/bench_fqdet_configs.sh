#!/usr/bin/env bash
# Cost table of the six FQDet/FQDetV2 configs: params and MACs from
# `python -m msvision.analysis` (add TIMING=1 for CPU latency; minutes per config).
# Usage: bash benchmarks/bench_fqdet_configs.sh > fqdet_costs.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
extra=(--skip-timing)
[ "${TIMING:-0}" = 1 ] && extra=(--iterations 1)
for name in r50_tpn_fqdet r50_tpn_fqdet_improved r50_fpn_fqdet r50_fpn_fqdetv2 r50_defenc_p3_fqdetv2 r50_defenc_p2_fqdetv2; do
  JAX_PLATFORMS=cpu python -m msvision.analysis --config="configs/fqdet/$name.py" --json "${extra[@]}" \
    | python -c "import json, sys; r = json.load(sys.stdin); r['name'] = '$name'; print(json.dumps(r))"
done
