"""A FIFO memory bank of detached embeddings, identical on every rank, saved in checkpoints.

MoCo's queue of negatives (He et al., 2020, arXiv:1911.05722), MSF/CMSF's bank of target
embeddings (Koohpayegani et al., 2021, arXiv:2105.07269) and mining's queue of candidates are
this one module. Unlike lightly's `MemoryBankModule` (`persistent=False`), the buffers are part
of `state_dict()`, so a resumed run or a restored Tune trial continues with the same bank.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysl import distributed


class MemoryBank(nn.Module):
    """The newest `size` rows pushed (by all ranks), with their labels and dataset indices.

    `push` gathers the rows of every rank in rank order before writing, so all ranks hold the
    same bank, equal to a single process pushing the concatenated batch. The bank starts empty
    (`read` returns only rows written so far), not with random vectors as MoCo/MSF do: a kNN
    search then never returns a meaningless random neighbour.

    Args:
        size: K, the number of rows kept (0 disables the bank).
        dim: D, the row width.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))  # (K, D)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))  # (K,)
        self.register_buffer(
            "index", torch.full((size,), -1, dtype=torch.long)
        )  # (K,) dataset index
        self.register_buffer("pushed", torch.zeros((), dtype=torch.long))  # rows pushed so far

    def __len__(self) -> int:
        return min(int(self.pushed), self.size)

    def read(self) -> tuple[Tensor, Tensor, Tensor]:
        """(keys (n, D), labels (n,), index (n,)) for the n = min(pushed, K) rows written, oldest
        slot first in storage order."""
        n = len(self)
        return self.keys[:n], self.labels[:n], self.index[:n]

    @torch.no_grad()
    def push(self, keys: Tensor, labels: Tensor | None = None, index: Tensor | None = None) -> None:
        """Append this rank's rows (B, D) after gathering every rank's; the oldest rows go first."""
        if self.size == 0:
            return
        keys = distributed.all_gather(keys.detach().to(self.keys.dtype))
        n = len(keys)
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long, device=keys.device)
        else:
            labels = distributed.all_gather(labels.long())
        if index is None:
            index = torch.full((n,), -1, dtype=torch.long, device=keys.device)
        else:
            index = distributed.all_gather(index.long())
        if n > self.size:  # more rows than the bank holds: keep the newest
            keys, labels, index = keys[-self.size :], labels[-self.size :], index[-self.size :]
            skipped, n = n - self.size, self.size
        else:
            skipped = 0
        slots = (self.pushed + skipped + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[slots] = keys
        self.labels[slots] = labels
        self.index[slots] = index
        self.pushed += n + skipped
