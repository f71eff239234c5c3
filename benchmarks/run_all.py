"""Every CPU speed table of ``benchmarks/RESULTS.md`` in one command: MSDA against the torch reference, RetinaNet
against torchvision (like for like), the input pipeline against a torchvision DataLoader, and
the compile time of the thesis configs' train steps.

    JAX_PLATFORMS=cpu python benchmarks/run_all.py [--quick] [--out FILE]

Runs each benchmark script as its own process, one after the other (never two at once: they
time the same cores), appending its Markdown to ``--out`` (default
``runs/benchmarks_<date>.md``) under a heading with the command, and prints how long each
took. Not yet timed end to end; from its parts measured on a quiet 2-core machine, the full
run takes about two hours (most of it compiling the ~45 thesis configs, 1.5–2.5 min each), and
``--quick`` (the pipeline's short run, one RetinaNet repeat, the train-step compile time of
four configs: two RetinaNets, an FQDet and an EffSeg model) about 20 minutes. Needs the
``oracle`` extra (torch, torchvision). Run it on a quiet machine: the load average is
printed before and after every benchmark, and a ratio taken under load is not a claim.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

QUICK_COMPILE_CONFIGS = ["configs/retinanet/r50_fpn.py", "configs/retinanet/r50_tpn_L3B2.py",
                         "configs/fqdet/r50_tpn_fqdet.py", "configs/effseg/r50_fpn_fqdetv2_effseg.py"]


def benchmarks(quick: bool, out: str) -> list[tuple[str, list[str]]]:
    py = [sys.executable]
    repeats = "5"  # medians of >= 5 repeats, also in the quick run
    return [
        ("MSDA: the default impl='auto' (the native kernel on the CPU) against Deformable DETR's PyTorch "
         "reference (fwd, fwd+bwd)",
         py + [os.path.join(HERE, "bench_msda.py"), "--impl", "auto", "--repeats", repeats, "--append", out]),
        ("Input pipeline: decode + DETR augmentation + padding against a torchvision DataLoader",
         py + [os.path.join(HERE, "bench_pipeline.py"), "--append", out] + (["--quick"] if quick else [])),
        ("R50-FPN-RetinaNet against torchvision, like for like",
         py + [os.path.join(HERE, "bench_retinanet.py"), "--repeats", "1" if quick else "3", "--markdown"]),
        ("Compile time of the thesis configs' train steps",
         py + [os.path.join(HERE, "bench_compile_times.py"), "--append", out]
         + (QUICK_COMPILE_CONFIGS + ["--no-inference"] if quick else [])),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configs (~15 min)")
    parser.add_argument("--out", default="", help="Markdown file to append every table to")
    args = parser.parse_args()
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"benchmarks_{time.strftime('%Y%m%d_%H%M')}.md"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    failed = []
    for title, cmd in benchmarks(args.quick, out):
        shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])
        with open(out, "a") as f:
            f.write(f"\n### {title}\n\n    python {shown}\n\nload average before: {os.getloadavg()[0]:.2f}\n\n")
        print(f"== {title}\n   python {shown}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        took = time.perf_counter() - t0
        if "--append" not in cmd:  # scripts that only print: keep their Markdown
            with open(out, "a") as f:
                f.write(proc.stdout)
        print(proc.stdout[-2000:], flush=True)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        if proc.returncode:
            failed.append(title)
        with open(out, "a") as f:
            f.write(f"\n{status}, {took / 60:.1f} min; load average after: {os.getloadavg()[0]:.2f}\n")
        print(f"   {status} in {took / 60:.1f} min", flush=True)
    total = (time.perf_counter() - start) / 60
    with open(out, "a") as f:
        f.write(f"\nrun_all{' --quick' if args.quick else ''}: {total:.1f} min in all\n")
    print(f"all tables in {out}; {total:.1f} min in all" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
