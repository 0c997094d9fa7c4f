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

# term -> constructor arguments for the benchmark (memory-based terms get a 16k bank)
TERMS: dict[str, dict[str, Any]] = {
    "infonce": {"temperature": 0.2},
    "infonce (MoCo queue)": {"temperature": 0.2, "queue_size": BANK},
    "supcon": {"temperature": 0.1},
    "selfcon": {"temperature": 0.1},
    "similarity": {},
    "icc": {},
    "mean_shift (MSF)": {"k": 5, "bank_size": BANK},
    "mean_shift (CMSF 2q)": {"k": 5, "bank_size": BANK, "constraint": "2q", "num_samples": 50_000},
    "bsim": {},
    "mining": {"queue_size": BANK, "warmup_epochs": 0.0},
}


def inputs(seed: int = 0) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    return Outputs(
        z=rand(V, B, D), p=rand(V, B, D), z_target=torch.randn(V, B, D, generator=g), h=rand(V, B, 512),
        z_sub=rand(1, V, B, D), z_mix=rand(1, B, D), p_mix=rand(1, B, D),
        mix_lam=torch.full((B,), 0.7), mix_index=torch.arange(B).flip(0),
        sample_ids=torch.randperm(50_000, generator=g)[:B], labels=torch.randint(0, CLASSES, (B,), generator=g), epoch=5.0,
    )  # fmt: skip


def make_term(label: str) -> torch.nn.Module:
    name = label.split(" ")[0]
    kwargs = dict(TERMS[label])
    term = LOSSES[name](
        **{k: v for k, v in kwargs.items() if k != "num_samples"},
        **({"num_samples": kwargs["num_samples"]} if "num_samples" in kwargs else {}),
    )
    for bank in [m for m in term.modules() if type(m).__name__ == "MemoryBank"]:  # fill banks
        for _ in range(0, bank.size, B):
            bank.push(
                F.normalize(torch.randn(B, bank.keys.shape[1]), dim=1),
                torch.randint(0, CLASSES, (B,)),
                torch.randint(0, 50_000, (B,)),
            )
    return term


def time_it(fn: Any, repeats: int) -> tuple[float, float, float]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), min(runs), max(runs)


def bench_terms(repeats: int) -> None:
    print(f"(1) forward + backward, V={V}, B={B}, D={D}, banks {BANK:,} rows; ms median [min-max]")
    out = inputs()

    def step(term: torch.nn.Module) -> Any:
        def run() -> float:
            loss = term(out)
            loss.backward()
            return loss.item()

        return run

    for label in TERMS:
        term = make_term(label)
        term.train()
        median, low, high = time_it(step(term), repeats)
        line = f"    {label:22s} {1000 * median:8.1f} [{1000 * low:.1f}-{1000 * high:.1f}]"
        reference = _reference(label)
        if reference is not None:
            ref_name, ref_fn = reference
            ref_median, ref_low, ref_high = time_it(lambda f=ref_fn: f(out).backward(), repeats)
            ours, theirs = term(out).item(), ref_fn(out).item()
            agree = "agree" if abs(ours - theirs) <= 1e-5 * max(1.0, abs(theirs)) else "DIFFER"
            line += (
                f"   {ref_name}: {1000 * ref_median:.1f} [{1000 * ref_low:.1f}-{1000 * ref_high:.1f}] ms, "
                f"ratio {median / ref_median:.2f}; values {ours:.6f} vs {theirs:.6f} ({agree})"
            )
        print(line)


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
def _search_in_fresh_process(bank: int, chunk: int, repeats: int) -> dict[str, float]:
    from raysl.losses.neighbours import k_nearest

    queries = F.normalize(torch.randn(B, D), dim=1)
    keys = torch.empty(bank, D).normal_()  # in place: no bank-sized temporary raises the peak
    keys.div_(keys.norm(dim=1, keepdim=True))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    median, low, high = time_it(lambda: k_nearest(queries, keys, 5, chunk), repeats)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "bank": bank,
        "ms": 1000 * median,
        "min": 1000 * low,
        "max": 1000 * high,
        "extra_mib": (after - before) / 1024,
        "bank_mib": keys.numel() * 4 / 2**20,
    }


def bench_banks(repeats: int, chunk: int) -> None:
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

    rows = [(measure(bank, chunk), measure(bank, bank)) for bank in (16_384, 65_536, 262_144)]
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    bench_terms(args.repeats)
    bench_banks(args.repeats, args.chunk)


if __name__ == "__main__":
    main()
