"""Raw pixels under the final evaluation protocol: the anchor every learned number sits beside.

Weighted cosine kNN (Wu et al., 2018) of the test split against train + val at each k, and
raysl's linear probe (`raysl.evaluate.linear_probe`: full-batch Adam on standardised
features, trained on train + val, scored on test) on the flattened pixels. The same k's, the
same temperature and the same probe settings as the run beside it, so tables compare like
with like (`../shared/measured.md`: 78.85 % at k = 200, 84.47 % at k = 20 and 83.49 % with
the probe on Fashion-MNIST).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from raysl.evaluate import knn_top1_ks, linear_probe


def raw_pixels(
    splits,
    ks: Sequence[int],
    temperature: float,
    probe_epochs: int | None = None,
    probe_lr: float = 0.1,
) -> dict[str, float]:
    """`test/knn_top1_k<k>` for each k (a k above the bank's size votes with all of it) and, with `probe_epochs`,
    `test/linear_top1`, of the raw pixels of `splits` (a `raysl.data.Splits` with a test
    split)."""
    bank = torch.cat([splits.train.images, splits.val.images]).flatten(1).float()  # (N, C*H*W)
    labels = torch.cat([splits.train.labels, splits.val.labels])
    test = splits.test.images.flatten(1).float()  # (Q, C*H*W)
    knn = knn_top1_ks(F.normalize(bank, dim=1), labels, F.normalize(test, dim=1),
                      splits.test.labels, splits.num_classes, ks, temperature)  # fmt: skip
    out = {f"test/knn_top1_k{k}": value for k, value in knn.items()}
    if probe_epochs:
        scored = {"test": (test, splits.test.labels)}
        probe = linear_probe(bank, labels, scored, splits.num_classes, probe_epochs, probe_lr)
        out["test/linear_top1"] = probe["test"]
    return out
