"""Baseline token selections to compare MMTok against, and `choose`, the dispatch by method name.

Every method follows the same rules as `selection.select`: it never picks a token that is not
allowed, an image with k >= n keeps all its tokens, an image with fewer than k allowed tokens keeps
all allowed ones, and kept indices come back ascending, with their pick order alongside (`Selection.order`):
the greedy order for vision, text and divprune; index order for random and uniform, which have none.
All of them run batched over padded tensors (no Python loop over images). The rules per method:

* random   -- k allowed tokens drawn with a seed per image (the engine derives it from the image's
              pixels, so an image gets the same tokens in any batch, on any device, and different
              images get different draws). The draw depends on that seed and the allowed tokens only,
              never on batch neighbours.
* uniform  -- k tokens evenly spaced over the image's allowed tokens in token order: the i-th of k
              has rank floor((2i + 1) * a / (2k)) among the a allowed tokens. In LLaVA's row-major grid
              that spreads them over the whole image; for LLaVA-NeXT (per view) and Qwen-VL (merged
              windows) token order is not raster order, so "even" means even in token order there.
* vision   -- greedy coverage of the vision tokens only: the alpha * Q term of MMTok alone.
* text     -- greedy coverage of the question's tokens only: P alone; an image whose question has no
              content tokens falls back to `vision`. P saturates once each content token's best match
              is picked; later picks gain nothing and take the lowest allowed indices.
* divprune -- DivPrune (Alvar et al., CVPR 2025): max-min diversity under cosine distance. The first
              pick is the token whose nearest other token is farthest; each next pick is the token whose
              nearest already-picked token is farthest (ties: lowest index). It runs on the features the
              authors' code uses, which the adapter chooses (`divprune_on`): the projected tokens V for
              LLaVA / LLaVA-NeXT (vbdi/divprune's llava_arch.py selects from the LLM's input embeddings),
              U for Qwen-VL (Ironieser/MMTok's Qwen DivPrune runs on the pooled pre-merger features).
              Checked against vbdi/divprune at 799e2d9 (`DivPrune` in LLaVA/llava/model/llava_arch.py) and
              Ironieser/MMTok at d1522cd (mmtok/qwen/qwen2_5_VLmodel_mmtok.py): the same kept indices as a
              float64 transcription of their loop on random 576-token images, k = 4, 16, 64
              (tests/test_baselines.py). Over allowed tokens only (the authors have no mask).
* visionzip -- VisionZip (Yang et al., CVPR 2025), as dvlab-research/VisionZip at 3151f6d
              (visionzip/clip_encoder.py, utils.py, main.py) does it on LLaVA. Of k tokens, round(k * 10 / 64)
              are contextual and the rest dominant (the authors' 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of
              192). Dominant: the view's CLS token itself, then the tokens the CLS pays most attention to,
              summed over heads, in the vision layer the model reads. Contextual: the other tokens, every
              step-th of them (step = max(1, rest // contextual), in token order) a target, each remaining
              token merged into the target whose attention key (averaged over heads) is most cosine-similar;
              a contextual token is its target's U row plus the mean of the U rows merged into it. The
              language model receives, per view, projector([CLS, dominant in token order, contextual in target
              order]) -- new rows, carried by `Selection.rows`; `indices` are the dominant tokens and the
              targets (so one fewer than k: the CLS is no vision token of V). Checked on a tiny LLaVA against
              a hand computation of the CLS attention from the layer's own weights and of the merge
              (tests/test_visionzip.py). Differences: allowed masks are honoured; on LLaVA-NeXT every view
              (base and each crop) is compressed on its own tokens after the model's unpadding and fed view
              after view, where the authors' code skips unpadding and reorders the crops' tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .selection import (
    ALPHA,
    TAU_T_LLAVA,
    TAU_V,
    Selection,
    as_mask,
    coverage_matrix,
    greedy_max_coverage,
    resolve,
    select,
)

BASELINES = ("random", "uniform", "vision", "text", "divprune", "visionzip", "evs")
EVS_FIRST = 255.0
"""EVS's score of a first-grid token (vLLM's constant: above any dissimilarity, which is at most 2)."""
RANDOM_SEED = 0


@dataclass
class ZipInputs:
    """What `visionzip` reads besides V and U, per token, from the vision layer the model reads."""

    attention: torch.Tensor
    """(B, n) the attention the CLS token of the token's view pays it, summed over heads."""
    keys: torch.Tensor
    """(B, n, h) the token's attention keys averaged over heads (VisionZip's merge metric)."""
    cls: torch.Tensor | None
    """(B, n, e) the U-space features of the CLS token of the token's view (fed first); None: no CLS."""
    project: Callable[[torch.Tensor], torch.Tensor]
    """U rows -> V rows: the model's projector."""

    def take(self, at: tuple[torch.Tensor, ...] | torch.Tensor | slice) -> ZipInputs:
        """The same inputs for the tokens at `at` (an index into the first two dims)."""
        return ZipInputs(self.attention[at], self.keys[at], None if self.cls is None else self.cls[at], self.project)


def visionzip_split(k: int) -> tuple[int, int]:
    """(dominant, contextual) of a budget k, the CLS counted among the dominant: the authors' 54 + 10 of 64."""
    contextual = round(k * 10 / 64)
    return k - contextual, contextual


def choose(
    method: str,
    vision: torch.Tensor,
    features: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    k: int | Sequence[int] | torch.Tensor,
    vision_mask: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    alpha: float = ALPHA,
    tau_t: float = TAU_T_LLAVA,
    tau_v: float = TAU_V,
    seed: int | Sequence[int] = RANDOM_SEED,
    divprune_on: str = "vision",
    zip_inputs: ZipInputs | None = None,
    previous: torch.Tensor | None = None,
) -> Selection:
    """Kept token indices per image (ascending, and in pick order) for `method` ("mmtok" or one of `BASELINES`).

    Arguments as in `selection.select`; `seed` (one for all images, or one per image) is used by "random" only;
    `divprune_on` ("vision" or "features") says which tensor "divprune" reads; "visionzip" needs `zip_inputs`
    and returns the rows the language model receives (`Selection.rows`); "evs" reads `previous` (B, n) long, each
    token's predecessor at the same position of the previous temporal grid (-1: none; None: no token has one).
    """
    if method == "mmtok":
        return select(
            vision, features, text, k=k, vision_mask=vision_mask, allowed=allowed, text_mask=text_mask,
            alpha=alpha, tau_t=tau_t, tau_v=tau_v,
        )
    if method not in BASELINES:
        raise ValueError(f"unknown selection method {method!r}")
    if method == "visionzip":
        if zip_inputs is None:
            raise ValueError("visionzip needs zip_inputs (the adapter's visionzip_inputs)")
        return _visionzip(vision, features, zip_inputs, k, vision_mask, allowed)
    if divprune_on not in ("vision", "features"):
        raise ValueError(f"divprune_on must be 'vision' or 'features', not {divprune_on!r}")
    if method == "random":
        seeds = torch.tensor([seed] * vision.shape[0] if isinstance(seed, int) else list(seed), dtype=torch.long)
        if len(seeds) != vision.shape[0]:
            raise ValueError(f"need one seed per image ({vision.shape[0]}), got {len(seeds)}")

    def pick(
        rows: torch.Tensor | slice, k_rows: torch.Tensor, allowed_rows: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if method == "random":
            return _random(k_rows, allowed_rows, seeds[rows if isinstance(rows, slice) else rows.cpu()].tolist())
        if method == "uniform":
            return _uniform(k_rows, allowed_rows)
        if method == "divprune":
            return _divprune((vision if divprune_on == "vision" else features)[rows], k_rows, allowed_rows)
        if method == "evs":
            prev = torch.full(vision.shape[:2], -1, device=vision.device) if previous is None else previous
            return _top_k(evs_scores(vision[rows], prev[rows].to(vision.device)), k_rows, allowed_rows)
        t = None if text is None else text[rows]
        tm = None if t is None or text_mask is None else text_mask[rows]
        vm = None if vision_mask is None else vision_mask[rows]
        if method == "vision" or t is None or t.shape[1] == 0:
            cov = coverage_matrix(vision[rows], features[rows], None, vision_mask=vm, alpha=alpha, tau_v=tau_v)
        else:  # "text": P alone, or alpha * Q for images without text rows
            cov = coverage_matrix(vision[rows], features[rows], t, vision_mask=vm, text_mask=tm, alpha=1.0,
                                  tau_t=tau_t, tau_v=tau_v)
            has_text = as_mask(tm, t.shape[:2], t.device).any(-1)
            # Zero the vision rows where there is text (P alone); keep alpha * Q where there is none.
            # `cov` is a fresh float32 tensor, so scaling it in place copies nothing.
            cov[:, t.shape[1]:] *= torch.where(has_text, 0.0, alpha).to(cov.dtype)[:, None, None]
        return greedy_max_coverage(cov, k_rows, allowed_rows)

    return resolve(vision, k, vision_mask, allowed, pick)


def _top_k(scores: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, max k) picks: each row's k highest-scoring allowed columns, -1 where none (ties: lowest index)."""
    steps = int(k.max()) if k.numel() else 0
    masked = scores.masked_fill(~allowed, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True)
    picks, values = order.indices[:, :steps], order.values[:, :steps]
    none = (torch.arange(steps, device=k.device) >= k[:, None]) | torch.isneginf(values)
    return picks.masked_fill(none, -1)


def evs_scores(vision: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """(B, n) EVS scores: 1 - cos(V[j], V[previous[j]]), or `EVS_FIRST` where a token has no predecessor."""
    has = previous >= 0
    before = vision.gather(1, previous.clamp_min(0)[..., None].expand_as(vision))
    dissimilarity = 1 - F.cosine_similarity(vision.float(), before.float(), dim=-1)
    return torch.where(has, dissimilarity, torch.full_like(dissimilarity, EVS_FIRST))


def _random(k: torch.Tensor, allowed: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    # Each row's draw on the CPU from its own generator: the same on every device and independent of
    # the batch an image lands in (a batch costs one small draw per image).
    n = allowed.shape[1]
    scores = torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(s)) for s in seeds])
    picks = _top_k(scores.to(allowed.device), k, allowed)
    # A random draw has no meaningful order: hand the picks back in index order ("no pick", -1, last).
    ascending = torch.sort(picks.masked_fill(picks < 0, n), dim=-1).values
    return ascending.masked_fill_(ascending == n, -1)


def _uniform(k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    steps = int(k.max()) if k.numel() else 0
    count = allowed.sum(-1, keepdim=True)
    i = torch.arange(steps, device=k.device)[None, :]
    ranks = (2 * i + 1) * count // (2 * k[:, None]).clamp_min(1)
    # Positions of the allowed tokens, ascending, first in each row (stable sort of "not allowed").
    positions = torch.sort((~allowed).to(torch.uint8), dim=-1, stable=True).indices
    picks = positions.gather(1, ranks.clamp(max=allowed.shape[1] - 1))
    return picks.masked_fill((i >= k[:, None]) | (ranks >= count), -1)


def _divprune(features: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    # float64: near-ties between candidates' distances are common at n = 576, and the authors' own
    # loop is what we are checked against; n x n is small.
    bsz, n, _ = features.shape
    steps = int(k.max()) if k.numel() else 0
    u = F.normalize(features.double(), dim=-1)
    dist = 1 - u @ u.transpose(1, 2)  # cosine distance, (B, n, n)
    # Step 0: each token's distance to its nearest other allowed token (the authors' second-smallest of
    # its column, the smallest being itself).
    others = allowed[:, :, None] & ~torch.eye(n, dtype=torch.bool, device=features.device)
    nearest = dist.masked_fill(~others, float("inf")).amin(1)
    nearest = torch.where(torch.isinf(nearest), torch.zeros((), dtype=dist.dtype, device=dist.device), nearest)
    blocked = torch.zeros(bsz, n, dtype=dist.dtype, device=features.device).masked_fill_(~allowed, float("-inf"))
    picks = torch.full((bsz, steps), -1, dtype=torch.long, device=features.device)
    for step in range(steps):
        score = nearest + blocked
        best, picks[:, step] = score.max(-1)  # max returns the first maximal index: lowest-index ties
        picks[:, step].masked_fill_(torch.isneginf(best) | (step >= k), -1)
        column = dist.gather(2, picks[:, step].clamp_min(0).view(bsz, 1, 1).expand(bsz, n, 1)).squeeze(-1)
        nearest = column if step == 0 else torch.minimum(nearest, column)
        blocked.scatter_(1, picks[:, step].clamp_min(0).view(bsz, 1), float("-inf"))
    return picks


def _visionzip(
    vision: torch.Tensor, features: torch.Tensor, zi: ZipInputs, k: int | Sequence[int] | torch.Tensor,
    vision_mask: torch.Tensor | None, allowed: torch.Tensor | None,
) -> Selection:
    bsz = vision.shape[0]
    rows: list[torch.Tensor | None] = [None] * bsz

    def pick(sel: torch.Tensor | slice, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        u, z = features[sel], zi.take(sel)
        r, n, e = u.shape
        contextual = (k.double() * 10 / 64).round().long()  # torch.round halves to even, like visionzip_split
        patches = (k - contextual - int(z.cls is not None)).clamp_min(0)
        dominant_picks = _top_k(z.attention.float(), patches, allowed)
        spare = torch.where(dominant_picks < 0, n, dominant_picks)
        dominant = torch.zeros(r, n + 1, dtype=torch.bool, device=u.device).scatter_(1, spare, True)[:, :n]
        rest = allowed & ~dominant
        rank = rest.long().cumsum(1) - 1
        step = (rest.sum(1) // contextual.clamp_min(1)).clamp_min(1)[:, None]
        target = rest & (rank % step == 0) & (rank // step < contextual[:, None])
        merge = rest & ~target & target.any(1, keepdim=True)
        metric = F.normalize(z.keys.float(), dim=-1)
        similarity = (metric @ metric.transpose(1, 2)).masked_fill_(~target[:, None, :], float("-inf"))
        into = similarity.argmax(-1)  # the first most similar target: the authors' argmax over targets in order
        weights = merge.float()
        merged = torch.zeros(r, n, e, device=u.device).scatter_add_(
            1, into[:, :, None].expand(r, n, e), u.float() * weights[:, :, None]
        )
        counts = torch.zeros(r, n, device=u.device).scatter_add_(1, into, weights).clamp_min(1)
        contextual_u = (u.float() + merged / counts[:, :, None]).to(u.dtype)
        # The feed per image: [CLS, dominant in token order, contextual in target order], projected at once.
        parts, lengths = [], []
        for row in range(r):
            own = ([z.cls[row, :1]] if z.cls is not None else []) + [u[row, dominant[row]], contextual_u[row, target[row]]]
            parts.append(torch.cat(own))
            lengths.append(len(parts[-1]))
        fed = zi.project(torch.cat(parts)).split(lengths)
        images = range(bsz)[sel] if isinstance(sel, slice) else sel.tolist()
        for image, feed in zip(images, fed):
            rows[image] = feed
        targets = torch.sort((~target).to(torch.uint8), dim=-1, stable=True).indices[:, : int(contextual.max())]
        targets = targets.masked_fill(torch.arange(targets.shape[1], device=u.device) >= target.sum(1, keepdim=True), -1)
        return torch.cat([dominant_picks, targets], 1)

    selection = resolve(vision, k, vision_mask, allowed, pick)
    selection.rows = rows
    return selection
