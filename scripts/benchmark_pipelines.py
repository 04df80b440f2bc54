"""Wall time and peak memory of the default `kedro run`, one pipeline at a time, in the default order.

Usage (from the project root, after `make install`):

    .venv/bin/python scripts/benchmark_pipelines.py [--env ENV] [--params k=v,...] [--pipelines a,b]

Each pipeline runs as its own `kedro run --pipelines=NAME` under GNU time, so the table gives every pipeline's
wall time and peak resident memory; their sum is the full run. Results go to stdout as a Markdown table and to
data/08_reporting/pipeline_benchmark.json (or the environment's data folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from generative_augmentation.pipeline_registry import PIPELINE_ORDER

ROOT = Path(__file__).resolve().parents[1]


def run_pipeline(name: str, env: str | None, params: str | None) -> dict[str, float | str]:
    """Run one pipeline under `/usr/bin/time -v`; its wall time (s) and peak RSS (MiB)."""
    command = ["/usr/bin/time", "-v", str(ROOT / ".venv/bin/kedro"), "run", f"--pipelines={name}"]
    command += [f"--env={env}"] if env else []
    command += [f"--params={params}"] if params else []
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"kedro run --pipelines={name} failed with exit code {result.returncode}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return {"pipeline": name, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None)
    parser.add_argument("--params", default=None)
    parser.add_argument("--pipelines", default=",".join(PIPELINE_ORDER))
    parser.add_argument("--output", default="data/08_reporting/pipeline_benchmark.json")
    args = parser.parse_args()
    rows = []
    for name in args.pipelines.split(","):
        rows.append(run_pipeline(name, args.env, args.params))
        print(f"{name}: {rows[-1]['wall_s']} s, peak {rows[-1]['peak_rss_mib']} MiB", flush=True)
    total = {
        "pipeline": "total",
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
    }
    machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    output = ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": machine, "env": args.env, "rows": [*rows, total]}, indent=2))
    print("\n| pipeline | wall time | peak memory |\n|---|---:|---:|")
    for row in [*rows, total]:
        wall, peak = row["wall_s"], row["peak_rss_mib"]
        print(f"| {row['pipeline']} | {wall / 60:.1f} min ({wall:.0f} s) | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
