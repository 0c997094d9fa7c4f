"""Nearest neighbours over a memory bank in chunks, for mean shift (`raysl.losses.mean_shift`).

MSF/CMSF (Koohpayegani et al., 2021, arXiv:2105.07269; Navaneet et al., 2022,
arXiv:2112.04607) take `topk` over the full (B, K) distance matrix to a bank of 128k rows.
Here the bank is scanned in blocks of `chunk` columns and the running k best are merged with
each block, so memory is O(A x (chunk + k)) for A queries, whatever the bank size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Squared distances between unit vectors lie in [0, 4]: adding DEMOTE to a column ranks it
# behind every column without it (CMSF subtracts 5 from its constraint set, the same order).
DEMOTE = 5.0


def k_nearest(
    queries: Tensor,
    keys: Tensor,
    k: int,
    chunk: int,
    penalty: Callable[[int, int], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The k smallest `2 - 2 q·m + penalty` of each query over the keys, scanned in chunks.

    Args:
        queries: (A, D) unit vectors.
        keys: (K, D) unit vectors.
        k: neighbours per query; min(k, K) are returned.
        chunk: keys per block.
        penalty: `(start, stop) -> (A, stop - start)` added to the distances of
            `keys[start:stop]`: `DEMOTE` ranks a key behind the others, `inf` excludes it.

    Returns:
        distances (A, k'), indices into `keys` (A, k'), k' = min(k, K), nearest first.
        Exactly equal distances are ordered as `torch.topk` orders them.
    """
    rows, n = len(queries), min(k, len(keys))
    best = queries.new_empty(rows, 0)  # (A, <=k) running k smallest distances
    best_index = torch.empty(rows, 0, dtype=torch.long, device=queries.device)
    for start in range(0, len(keys), chunk):
        stop = min(start + chunk, len(keys))
        block = 2 - 2 * queries @ keys[start:stop].T  # (A, c)
        if penalty is not None:
            block = block + penalty(start, stop)
        index = torch.arange(start, stop, device=queries.device).expand(rows, -1)  # (A, c)
        block, index = torch.cat([best, block], dim=1), torch.cat([best_index, index], dim=1)
        best, position = block.topk(min(n, block.shape[1]), dim=1, largest=False)
        best_index = index.gather(1, position)
    return best, best_index


def member_mask(members: Tensor, groups: Tensor) -> Tensor:
    """Which columns belong to one of each row's member groups.

    Args:
        members: (A, m) group ids per row; -1 never matches.
        groups: (c,) group id of each column (>= 0).

    Returns:
        (A, c) bool, built with m comparisons of (A, c) (memory O(A x c)).
    """
    mask = torch.zeros(len(members), len(groups), dtype=torch.bool, device=members.device)
    for column in members.T:
        mask |= column[:, None] == groups[None, :]
    return mask
