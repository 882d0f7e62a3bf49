"""Synthetic generation throughput on this machine (images/s): rendering alone, rendering + PNG + table rows,
and the whole pull flow through Prefect with 1 and 2 worker threads (after a warm-up flow). Prints a table, writes JSON.

    python benchmarks/bench_synthetic.py [--n 240] [--out benchmarks/results/synthetic.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import yaml

from bench_models import write_results
from detection.datasets.synthetic import SyntheticConfig, generate_images, render_scene


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="images per measurement (default: the params default)")
    parser.add_argument("--out", default="benchmarks/results/synthetic.json")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    cfg = SyntheticConfig(n_images=args.n)
    results: dict[str, float] = {}

    render_scene(cfg, 0, 0)                                             # warm-up (imports, caches)
    results["render_only"] = args.n / timed(lambda: [render_scene(cfg, 0, i) for i in range(args.n)])
    with tempfile.TemporaryDirectory() as tmp:
        results["render_png_rows"] = args.n / timed(lambda: generate_images(cfg, 0, range(args.n), tmp))

    from flows.pull import run_pull

    def pull(workers: int, n: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                Path("params.yaml").write_text(yaml.safe_dump(
                    {"seed": 0, "workers": workers, "pull": {"synthetic": {"n_images": n}}}))
                return timed(lambda: run_pull("params.yaml"))
            finally:
                os.chdir(cwd)

    startup = pull(1, 4)              # the first flow of a process also starts Prefect's ephemeral API
    for workers in (1, 2):
        results[f"pull_flow_{workers}_workers"] = args.n / pull(workers, args.n)

    print(f"\nsynthetic generation, {args.n} images of {cfg.width}x{cfg.height}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"first flow of a process (Prefect ephemeral start-up + 4 images): {startup:.1f} s")
    print(f"{'measurement':<28}{'images/s':>10}")
    for name, value in results.items():
        print(f"{name:<28}{value:>10.1f}")
    write_results(str(out), {"n_images": args.n, "width": cfg.width, "height": cfg.height, "cpus": os.cpu_count(),
                             "images_per_s": results, "first_flow_seconds": startup})


if __name__ == "__main__":
    main()
