"""raysl's GPU path, measured in one prepared run of at most ~8 minutes (issue 14).

Parts, in this order, each in its own process with its own time limit (a CUDA error or a hang
in one part does not take the others down), every measurement appended to `results.jsonl`
the moment it finishes, so a timeout still returns what was done:

  env         torch, CUDA, the GPU, bf16 support, TF32 flags, nvidia-smi.
  precision   SimCLR ResNet-18 (CIFAR stem) on 32x32x3 synthetic uint8 images on the GPU,
              batch 512, two views, raysl's `Augment` on the device, the bare loop of
              `bench_loop.py`: img/s and s per 50,000-image epoch for fp32, bf16 autocast,
              bf16 + channels-last, bf16 + channels-last + torch.compile; GPU busy (mean of
              `nvidia-smi` utilization.gpu sampled every 100 ms over the timed steps); peak
              memory.
  fit         raysl's `fit()` (its CUDA defaults: bf16 autocast, channels-last, images on the
              GPU) against the same bare loop, alternating, same model, data, augmentation:
              the ratio fit/bare, and fit's own s/epoch and GPU busy over its steady state.
  augment     `bench_augment.measure` on the GPU: raysl vs torchvision v2 per sample (and
              kornia when installed), 3x32x32, 2 views, batch 512.
  losses      `bench_losses.term_timings`: every term's forward + backward at B = 512,
              banks of 16,384 and 65,536 rows, with peak memory.
  neighbours  `bench_losses.measure_search`: k_nearest for 512 queries over banks of
              16k-1M rows, chunked (4,096) and in one block: time and memory added.
  ray         `raysl doctor`'s node probe (`check_cluster_nodes`) against a local Ray session:
              the GPUs Ray advertises vs those torch sees; then, in the same session, a real
              4-trial `raysl tune` study on the synthetic source with `gpu: 0.25` per trial:
              how many trials ran at once (MLflow start/end times, and processes on the GPU
              from `nvidia-smi --query-compute-apps`), whether all completed and are in MLflow.
  fit_compile `fit()` with `compile: true` (graph breaks under autocast show up here).

Outputs in --out (default: $OUT, else ./gpu_check_out): results.jsonl, summary.json (per
part: status ok / failed / timeout / skipped, seconds, rows, error), table.md (for people),
logs/<part>.log (each part's own output).

    python benchmarks/gpu_check.py [--out DIR] [--budget 480] [--parts precision,fit] [--limit fit=200]
    python benchmarks/gpu_check.py --dry-run     # CPU rehearsal, tiny sizes (the tests run it)

--dry-run runs every part on the CPU with tiny sizes, a few steps and raysl's small ConvNet
instead of ResNet-18 (a minute saved; the code path is the same); the study becomes a
fractional-CPU study (0.5 CPU per trial), torch.compile uses the "eager" backend (dynamo
traces the graph, no inductor code generation, which would take minutes on 2 cores), and the
doctor reports "no GPU". Its numbers mean nothing; it exists so the script cannot rot.
Exit status: 0 when every part is ok, 1 otherwise, 2 for bad flags or no GPU without --dry-run.

This file is the driver (processes, limits, outputs, table); the parts are in gpu_parts.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from gpu_parts import DRY, PARTS, Sizes  # noqa: E402

RUN_ID = "RAYSL_GPU_CHECK_RUN"  # tags this run's lines in results.jsonl (it is appended to)
ANCHORS = {  # s per SimCLR ResNet-18 CIFAR-10 epoch elsewhere; our goal on an H200
    "A100 (dkobak/simclr-cifar10)": 11.9,
    "A6000 (lightly benchmarks)": 26.0,
    "goal on an H200 (GPU busy >= 90 %)": 6.0,
}
# part -> time limit in seconds on a GPU (the run's --budget caps the sum)
LIMITS = {"env": 60, "precision": 240, "fit": 120, "augment": 60, "losses": 90,
          "neighbours": 60, "ray": 180, "fit_compile": 180}  # fmt: skip


# ---- one part, in a child process ------------------------------------------------------------
def run_part(name: str, out: Path, dry_run: bool) -> None:
    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # the parent's time limit: clean up
    dev = torch.device("cpu") if dry_run else torch.device("cuda", 0)
    S = DRY if dry_run else Sizes()
    if dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    errors = []

    def emit(row: dict[str, Any]) -> None:
        if "error" in row:
            errors.append(row["error"])
        with (out / "results.jsonl").open("a") as f:
            f.write(
                json.dumps({"part": name, "run": os.environ.get(RUN_ID, ""), **row}, default=str)
                + "\n"
            )

    PARTS[name](S, dev, emit, out) if name == "ray" else PARTS[name](S, dev, emit)
    if errors:  # measurements that failed inside a part that went on: the part is not ok
        print(f"{len(errors)} measurement(s) failed: " + " | ".join(errors), file=sys.stderr)
        sys.exit(1)


# ---- the driver ------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu_check_out")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the rehearsal")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all parts together")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}"
    )
    p.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS",
                   help="override a part's time limit (repeatable)")  # fmt: skip
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    a = p.parse_args()
    out = a.out or Path(os.environ.get("OUT") or "gpu_check_out")
    if a.part:
        return run_part(a.part, out, a.dry_run)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    limits = dict(LIMITS)
    for item in a.limit:
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds.replace(".", "", 1).isdigit():
            unknown.append(item)
        else:
            limits[name] = float(seconds)
    if unknown:
        print(f"gpu_check: unknown part or bad --limit {', '.join(unknown)}; parts: {', '.join(PARTS)}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is visible; run with --dry-run for the CPU rehearsal",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    os.environ[RUN_ID] = run = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    deadline = time.monotonic() + a.budget
    summary: dict[str, Any] = {"run": run, "mode": "dry-run (CPU)" if a.dry_run else "GPU", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "sizes": asdict(DRY if a.dry_run else Sizes()), "anchors_s_per_epoch": ANCHORS, "parts": {}}  # fmt: skip
    for name in parts:
        limit = min(limits[name], deadline - time.monotonic())
        if limit < 1:
            summary["parts"][name] = {"status": "skipped", "error": "no time left in --budget"}
        else:
            summary["parts"][name] = _child(name, out, a.dry_run, limit)
        summary["parts"][name]["rows"] = _rows(out, name, run)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "table.md").write_text(table(summary))
        print(f"{name:12s} {summary['parts'][name]['status']:8s} "
              f"{summary['parts'][name].get('seconds', 0):6.1f} s", flush=True)  # fmt: skip
    print(table(summary))
    failed = [n for n, r in summary["parts"].items() if r["status"] != "ok"]
    if failed:
        print(f"not ok: {', '.join(failed)} (see {out}/logs/)")
    sys.exit(1 if failed else 0)


def _child(name: str, out: Path, dry_run: bool, limit: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--part",
        name,
        "--out",
        str(out),
        *(["--dry-run"] if dry_run else []),
    ]
    started = time.monotonic()
    with (out / "logs" / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, status = proc.wait(timeout=limit), None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # our own child's group: it shuts Ray down
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = None, "timeout"
    result: dict[str, Any] = {"status": status or ("ok" if rc == 0 else "failed"),
                              "seconds": time.monotonic() - started, "limit_s": limit}  # fmt: skip
    if result["status"] != "ok":
        tail = (out / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        result["error"] = " | ".join(tail)[-600:]
    return result


def _rows(out: Path, name: str, run: str) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    mine = [r for r in rows if r.get("part") == name and r.get("run") == run]
    return [{k: v for k, v in r.items() if k not in ("part", "run")} for r in mine]


def table(summary: dict[str, Any]) -> str:
    """Markdown: a headline against the anchors, then one table per part."""
    lines = [f"# gpu_check ({summary['mode']}, {summary['started']})", ""]
    fit_rows = [
        r for r in summary["parts"].get("fit", {}).get("rows", []) if r.get("loop") == "raysl fit()"
    ]
    if fit_rows:
        best = min(r["s_per_epoch"] for r in fit_rows)
        busy = [r["gpu_busy_mean"] for r in fit_rows if "gpu_busy_mean" in r]
        lines.append(f"raysl fit(): {best:.2f} s per 50,000-image epoch"
                     + (f", GPU busy {statistics.fmean(busy):.0f} %" if busy else "")
                     + "; anchors: " + "; ".join(f"{k} {v} s" for k, v in ANCHORS.items()))  # fmt: skip
        lines.append("")
    for name, part in summary["parts"].items():
        lines.append(f"## {name}: {part['status']} ({part.get('seconds', 0):.0f} s)")
        if part.get("error"):
            lines.append(f"error: `{part['error']}`")
        rows = part.get("rows", [])
        for group in dict.fromkeys(r.get("check") for r in rows):  # one table per kind of row
            chunk = [r for r in rows if r.get("check") == group]
            keys = list(dict.fromkeys(k for r in chunk for k in r))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in chunk]
        lines.append("")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v).replace("|", "/")


if __name__ == "__main__":
    main()
