"""How `grpo report` scales: synthetic stores of 100k and 1M completions, time and peak RSS.

The store is written through the real RunStore (zstd Parquet parts of 4096 rows, metrics from
step_length_metrics). Each measurement runs in a fresh Python process so its peak RSS is its
own (interpreter and imports included): "data" is loading the five Parquet columns, the
per-step aggregation, the Kaplan-Meier estimate and the diagnosis; "full report" adds the
figures and HTML/Markdown (and the matplotlib/scipy imports). Prints a Markdown table.

    .venv/bin/python benchmarks/report_scaling.py    # 200 and 2,000 steps x 512 (~100k, ~1M)
    .venv/bin/python benchmarks/report_scaling.py --steps 500 --per-step 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from grpo_cli.report import analyse_run, build_report
from grpo_cli.report.load import load_targets
imported = time.perf_counter()
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[4] == "data":  # reading Parquet + per-step aggregation + KM + diagnosis only
    views = [analyse_run(r) for r in load_targets([sys.argv[1]], sys.argv[2]).runs]
else:
    build_report([sys.argv[1]], out=sys.argv[3], runs_dir=sys.argv[2])
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "s": done - imported,
                  "rss_imports_kib": rss_imports,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def build_store(root: Path, steps: int, per_step: int) -> tuple[str, float]:
    from grpo_cli.report.synthetic import write_synthetic_run

    n = 8
    prompts = per_step // n
    run_id = f"bench-{steps}x{per_step}"
    started = time.perf_counter()
    write_synthetic_run(root, run_id, "collapse", steps=steps, prompts=prompts, n=n, cap=48)
    return run_id, time.perf_counter() - started


def measure(root: Path, run_id: str, out: Path, mode: str) -> dict[str, float]:
    """One fresh process per measurement, so peak RSS is that of the measured work."""
    res = subprocess.run([sys.executable, "-c", CHILD, run_id, str(root), str(out), mode],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--per-step", type=int, default=512,
                        help="completions per step (a multiple of 8: prompts x 8 samples)")
    parser.add_argument("--keep", type=Path, default=None, help="write stores here (kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        lines = ["| completions | steps | parquet parts | store MiB | data s | data peak RSS MiB "
                 "| full report s | full report peak RSS MiB |", "|" + "---|" * 8]
        for steps in args.steps:
            rows = steps * args.per_step
            run_id, _ = build_store(root, steps, args.per_step)
            parts = list((root / run_id / "rollouts").glob("part-*.parquet"))
            size = sum(p.stat().st_size for p in (root / run_id).rglob("*") if p.is_file())
            data = measure(root, run_id, root / "reports" / run_id, "data")
            full = measure(root, run_id, root / "reports" / run_id, "full")
            lines.append(
                f"| {rows:,} | {steps:,} | {len(parts)} | {size / 2**20:.1f} | "
                f"{data['s']:.2f} | {data['peak_rss_kib'] / 1024:.0f} | {full['s']:.1f} | "
                f"{full['peak_rss_kib'] / 1024:.0f} |")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
