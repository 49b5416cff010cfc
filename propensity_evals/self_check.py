"""``hf-prefix``'s start-up self-check: the first scored requests, scored both ways.

The allow-list (:mod:`propensity_evals.shared_scoring`) is proven by tests against the
transformers this pack pins. A user's run may load another transformers, or a checkpoint of
a listed family with a setting the tests never saw; where that makes shared-prefix scoring
inexact, nothing else would notice. So the first batch a run scores the shared way is
checked: a few of its requests (from its first cluster, which fills its row, and its last,
which sits on padding) are scored again by ``hf``'s own per-option code, and the run keeps
sharing only if every log-likelihood agrees within what the model's precision allows.
Otherwise it scores everything per option, as ``hf`` does, and says so in one line.

This module holds the comparison; ``prefix_sharing_lm.py`` runs it.
"""

from __future__ import annotations

import torch

# Requests taken from each of the two clusters checked: its first and its last (in a cyclic
# run, the written order's first option and the last rotation's last one, so a rotated
# branch of the trie is checked too). Bounds the check to one pass of per-option rows, 1-2 s
# for SmolLM2 on 2 CPU cores (BENCHMARKS.md), even where a cluster is every cyclic order of
# an eight-option question.
REQUESTS_PER_CLUSTER = 2

# Differences seen between the two ways on verified families (tests/test_model_families.py
# and benchmarks): ~4e-5 in float32; in bfloat16 and float16, up to the rounding of the
# log-likelihood itself (0.5 nats at -86 in bfloat16, one unit in the last place; a margin of
# 1 epsilon per unit of |log-likelihood| was just enough in tests). Families that are not exact
# were off by 2 to 20 nats.
ABSOLUTE_TOLERANCE = 1e-3
EPSILONS = 4


def tolerance(loglikelihood: float, dtype: torch.dtype) -> float:
    """How far the shared and per-option log-likelihoods may differ for a model computing in
    ``dtype``: rounding grows with the value in the coarse half-precision formats."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return ABSOLUTE_TOLERANCE + EPSILONS * eps * max(1.0, abs(loglikelihood))


def sample(cluster_requests: list[list[int]]) -> list[int]:
    """The request indices to check: up to ``REQUESTS_PER_CLUSTER``, evenly spread, from the
    first and the last of the batch's clusters (its widest row and its most padded one)."""
    ends = cluster_requests[:1] + cluster_requests[1:][-1:]
    return [index for requests in ends for index in spread(requests, REQUESTS_PER_CLUSTER)]


def spread(items: list[int], count: int) -> list[int]:
    """Up to ``count`` of ``items``, evenly spaced, the first and the last among them."""
    if len(items) <= count:
        return list(items)
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)]


def disagreement(
    shared: list[tuple[float, bool]], per_option: list[tuple[float, bool]], dtype: torch.dtype
) -> str | None:
    """One line saying how far the shared answers are from the per-option ones, or None
    where every log-likelihood is within :func:`tolerance`."""
    off = [
        abs(ours[0] - ref[0])
        for ours, ref in zip(shared, per_option, strict=True)
        if abs(ours[0] - ref[0]) > tolerance(ref[0], dtype)
    ]
    if not off:
        return None
    return (
        f"the start-up self-check found shared-prefix scores off by up to {max(off):.3g} nats "
        f"on {len(off)} of {len(shared)} requests"
    )
