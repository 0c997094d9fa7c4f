"""Loss terms: forward + backward time at B=512, D=128 against PyPI reference implementations,
and the memory-bank neighbour search at banks of 16k, 64k and 256k rows, in one run.

(1) Every registered term on the same random embeddings (V=2 views of B=512 images, D=128,
    10 classes; memory-based terms with a full bank of 16,384 rows), forward + backward,
    median of repeats. Where a reference exists on PyPI the same inputs go through it in the
    same run: lightly's `NTXentLoss` for `infonce`, pytorch-metric-learning's `SupConLoss`
    for `supcon`; the values must agree to 1e-5 and the time ratio raysl/reference is printed
    (target <= 1.0). Install them with `pip install -e '.[bench]'`.
(2) `k_nearest` (mean shift's chunked top-k) for 512 queries over banks of 16k, 64k, 256k
    rows: time, and the peak resident memory the search adds on top of the bank itself,
    each size in a fresh process (target: time linear in the bank, memory flat).

    python benchmarks/bench_losses.py [--repeats 7] [--threads 2]
    python benchmarks/bench_losses.py --smoke   # tiny, a few seconds; references skipped if absent

`term_timings` and `measure_search` take a device and sizes, for `gpu_check.py`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysl.losses import LOSSES, Outputs

B, D, V, CLASSES, BANK = 512, 128, 2, 10, 16_384
BANKS = (16_384, 65_536, 262_144)  # (2): neighbour search


def terms(bank: int = BANK) -> dict[str, dict[str, Any]]:
    """term label -> constructor arguments (memory-based terms get a bank of `bank` rows)."""
    return {
        "infonce": {"temperature": 0.2},
        "infonce (MoCo queue)": {"temperature": 0.2, "queue_size": bank},
        "supcon": {"temperature": 0.1},
        "selfcon": {"temperature": 0.1},
        "similarity": {},
        "icc": {},
        "mean_shift (MSF)": {"k": 5, "bank_size": bank},
        "mean_shift (CMSF 2q)": {"k": 5, "bank_size": bank, "constraint": "2q", "num_samples": 50_000},
        "bsim": {},
        "mining": {"queue_size": bank, "warmup_epochs": 0.0},
    }  # fmt: skip


TERMS = terms()


def inputs(seed: int = 0, batch: int = B, device: str | torch.device = "cpu") -> Outputs:
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dev).requires_grad_()  # noqa: E731
    fixed = lambda t: t.to(dev)  # noqa: E731
    return Outputs(
        z=rand(V, batch, D), p=rand(V, batch, D), z_target=fixed(torch.randn(V, batch, D, generator=g)),
        h=rand(V, batch, 512), z_sub=rand(1, V, batch, D), z_mix=rand(1, batch, D), p_mix=rand(1, batch, D),
        mix_lam=fixed(torch.full((batch,), 0.7)), mix_index=fixed(torch.arange(batch).flip(0)),
        sample_ids=fixed(torch.randperm(50_000, generator=g)[:batch]),
        labels=fixed(torch.randint(0, CLASSES, (batch,), generator=g)), epoch=5.0,
    )  # fmt: skip


def make_term(
    label: str, bank: int = BANK, batch: int = B, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    name = label.split(" ")[0]
    kwargs = dict(terms(bank)[label])
    term = LOSSES[name](
        **{k: v for k, v in kwargs.items() if k != "num_samples"},
        **({"num_samples": kwargs["num_samples"]} if "num_samples" in kwargs else {}),
    ).to(device)
    for memory in [m for m in term.modules() if type(m).__name__ == "MemoryBank"]:  # fill banks
        for _ in range(0, memory.size, batch):
            memory.push(
                F.normalize(torch.randn(batch, memory.keys.shape[1], device=device), dim=1),
                torch.randint(0, CLASSES, (batch,), device=device),
                torch.randint(0, 50_000, (batch,), device=device),
            )
    return term


def time_it(
    fn: Any, repeats: int, device: str | torch.device = "cpu"
) -> tuple[float, float, float]:
    """(median, min, max) seconds of `fn()` after one warm-up call, the device synchronised."""
    dev = torch.device(device)
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), min(runs), max(runs)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def term_timings(
    repeats: int, batch: int = B, bank: int = BANK, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """Per term: label, ms [min, max] of forward + backward, peak_mib (CUDA: the most memory
    allocated during the timed calls, inputs and term state included), and the reference's
    time and value, or why it was skipped."""
    dev = torch.device(device)
    out = inputs(batch=batch, device=dev)

    def step(term: torch.nn.Module) -> Any:
        def run() -> float:
            loss = term(out)
            loss.backward()
            return loss.item()

        return run

    rows = []
    for label in TERMS:
        row: dict[str, Any] = {"term": label, "batch": batch, "bank": bank}
        try:
            term = make_term(label, bank, batch, dev)
            term.train()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            median, low, high = time_it(step(term), repeats, dev)
        except Exception as exc:  # one failing term (e.g. a device mismatch) keeps the others
            rows.append({**row, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        row.update(ms=1000 * median, min=1000 * low, max=1000 * high)
        if dev.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        try:
            reference = _reference(label)
        except ImportError as exc:
            row["reference_skipped"] = f"{exc} (pip install -e '.[bench]')"
            reference = None
        if reference is not None:
            ref_name, ref_fn = reference
            ref_median, ref_low, ref_high = time_it(
                lambda f=ref_fn: f(out).backward(), repeats, dev
            )
            ours, theirs = term(out).item(), ref_fn(out).item()
            row.update(reference=ref_name, ref_ms=1000 * ref_median, ref_min=1000 * ref_low,
                       ref_max=1000 * ref_high, ratio=median / ref_median, value=ours, ref_value=theirs,
                       agree=abs(ours - theirs) <= 1e-5 * max(1.0, abs(theirs)))  # fmt: skip
        rows.append(row)
        del term
    return rows


def bench_terms(repeats: int, batch: int = B, bank: int = BANK, device: str = "cpu") -> int:
    """Prints the timings; returns how many terms failed."""
    print(f"(1) forward + backward, V={V}, B={batch}, D={D}, banks {bank:,} rows, {device}; "
          "ms median [min-max]")  # fmt: skip
    rows = term_timings(repeats, batch, bank, device)
    for row in rows:
        if "error" in row:
            print(f"    {row['term']:22s} FAILED: {row['error']}")
            continue
        line = f"    {row['term']:22s} {row['ms']:8.1f} [{row['min']:.1f}-{row['max']:.1f}]"
        if "peak_mib" in row:
            line += f"  peak {row['peak_mib']:,.0f} MiB"
        if "reference" in row:
            line += (
                f"   {row['reference']}: {row['ref_ms']:.1f} [{row['ref_min']:.1f}-{row['ref_max']:.1f}] ms, "
                f"ratio {row['ratio']:.2f}; values {row['value']:.6f} vs {row['ref_value']:.6f} "
                f"({'agree' if row['agree'] else 'DIFFER'})"
            )
        elif "reference_skipped" in row:
            line += f"   reference skipped: {row['reference_skipped']}"
        print(line)
    return sum("error" in row for row in rows)


def _reference(label: str) -> tuple[str, Any] | None:
    if label == "infonce":
        from lightly.loss import NTXentLoss

        lightly = NTXentLoss(temperature=0.2)
        return "lightly NTXentLoss", lambda o: lightly(o.z[0], o.z[1])
    if label == "supcon":
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=0.1)
        return "PML SupConLoss", lambda o: pml(
            F.normalize(o.z.flatten(0, 1), dim=1), o.labels.repeat(V)
        )
    return None


# ---- (2) neighbour search over banks ---------------------------------------------------------
def measure_search(
    bank: int, chunk: int, repeats: int, device: str = "cpu", queries: int = B
) -> dict[str, float]:
    """`k_nearest` (k=5) of `queries` unit vectors over a bank of `bank` rows on `device`.

    extra_mib: memory the search adds on top of the bank: on CUDA the peak allocated during
    the calls minus what was allocated before; on the CPU the growth of the peak resident
    set, which is only meaningful in a fresh process (`bench_banks` starts one per size).
    """
    from raysl.losses.neighbours import k_nearest

    dev = torch.device(device)
    q = F.normalize(torch.randn(queries, D, device=dev), dim=1)
    keys = torch.empty(bank, D, device=dev).normal_()  # in place: no bank-sized temporary
    keys.div_(keys.norm(dim=1, keepdim=True))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    median, low, high = time_it(lambda: k_nearest(q, keys, 5, chunk), repeats, dev)
    if dev.type == "cuda":
        after = torch.cuda.max_memory_allocated(dev)
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "bank": bank,
        "chunk": chunk,
        "ms": 1000 * median,
        "min": 1000 * low,
        "max": 1000 * high,
        "extra_mib": (after - before) / 2**20,
        "bank_mib": keys.numel() * 4 / 2**20,
    }


def _search_in_fresh_process(bank: int, chunk: int, repeats: int) -> dict[str, float]:
    return measure_search(bank, chunk, repeats)


def bench_banks(repeats: int, chunk: int, banks: tuple[int, ...] = BANKS) -> None:
    print(
        f"(2) k_nearest (k=5) for {B} queries, chunk {chunk} vs one block (unchunked topk); "
        "each measurement in a fresh process"
    )
    here = str(Path(__file__).parent)

    def measure(bank: int, block: int) -> dict[str, float]:
        code = (
            f"import json, sys; sys.path.insert(0, {here!r}); import bench_losses as b; "
            f"print(json.dumps(b._search_in_fresh_process({bank}, {block}, {repeats})))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    rows = [(measure(bank, chunk), measure(bank, bank)) for bank in banks]
    base = rows[0][0]
    for row, whole in rows:
        print(
            f"    bank {row['bank']:>7,} ({row['bank_mib']:.0f} MiB): chunked {row['ms']:7.1f} ms "
            f"[{row['min']:.1f}-{row['max']:.1f}] (x{row['ms'] / base['ms']:.1f} time for "
            f"x{row['bank'] / base['bank']:.0f} rows), adds {row['extra_mib']:.0f} MiB peak;  "
            f"unchunked {whole['ms']:.1f} ms, adds {whole['extra_mib']:.0f} MiB peak"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument(
        "--smoke", action="store_true", help="B=64, banks of 1-2k rows, 1 repeat (the tests)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.smoke:
        failed = bench_terms(1, batch=64, bank=1024)
        bench_banks(1, 1024, banks=(2048,))
    else:
        failed = bench_terms(args.repeats)
        bench_banks(args.repeats, args.chunk)
    if failed:
        sys.exit(f"{failed} term(s) failed")


if __name__ == "__main__":
    main()
