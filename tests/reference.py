"""An independent, deliberately plain implementation of DESIGN.md §2 for one image.

Float64, explicit Python loops, no code shared with mmtok_cli.selection: tests compare the
product's batched float32 code against this.
"""

from __future__ import annotations

import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double().cpu()  # the reference runs on the CPU, whatever device the tensors come from
    return x / x.norm(dim=-1, keepdim=True)


def coverage(V, U, T=None, *, alpha=0.5, tau_t=0.02, tau_v=0.2) -> torch.Tensor:
    n = V.shape[0]
    parts = []
    if T is not None and T.shape[0] > 0:
        parts.append(torch.softmax(_unit(T) @ _unit(V).T / tau_t, dim=1) / T.shape[0])
    parts.append(alpha * torch.softmax(_unit(U) @ _unit(U).T / tau_v, dim=1) / n)
    return torch.cat(parts)


def objective(C: torch.Tensor, subset) -> float:
    if not subset:
        return 0.0
    return float(C[:, list(subset)].max(dim=1).values.sum())


def greedy(C: torch.Tensor, k: int, allowed=None) -> tuple[list[int], list[float]]:
    """Pick order and marginal gains of the greedy rule, one column at a time."""
    C = C.cpu()
    n = C.shape[1]
    allowed = [True] * n if allowed is None else [bool(a) for a in allowed]
    best = torch.zeros(C.shape[0], dtype=torch.float64)
    picked, gains = [], []
    for _ in range(k):
        top, top_j = None, None
        for j in range(n):
            if not allowed[j] or j in picked:
                continue
            gain = float(torch.clamp(C[:, j].double() - best, min=0).sum())
            if top is None or gain > top:  # strict: ties keep the lowest index
                top, top_j = gain, j
        if top_j is None:
            break
        picked.append(top_j)
        gains.append(top)
        best = torch.maximum(best, C[:, top_j].double())
    return picked, gains


def mmtok_indices(V, U, T, k, allowed=None, **params) -> list[int]:
    n = V.shape[0]
    if k >= n:
        return list(range(n))
    if allowed is not None and sum(bool(a) for a in allowed) <= k:
        return [j for j in range(n) if allowed[j]]
    picked, _ = greedy(coverage(V, U, T, **params), k, allowed)
    return sorted(picked)
