"""Many token sequences that share prefixes, laid out as one row under a tree attention mask.

A question scored in every cyclic order of its options asks for k contexts times k
continuations. As a token trie, each prefix they share (the question text, `` (``) is one
node; a node attends to itself and its ancestors only, and sits at its depth in the
sequence, so it computes exactly what it computes in any request that contains it. The trie
of a cluster of requests runs as one row of one forward pass: no KV cache to copy, no pass
per level.

Attention is permutation-equivariant under an explicit mask and explicit positions, so the
order of the nodes in the row is free: nodes whose logits are needed (each context's last
token and the continuation tokens fed to the model) go last, and the model computes the
vocabulary projection for the row's last ``kept`` columns only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Sequence = tuple[int, ...]


@dataclass
class TokenTree:
    """A trie over the sequences ``context + continuation[:-1]`` of some requests, in row
    order (the nodes needing no logits first).

    ``predictors[r]`` holds, for request ``r``, the row column of the node whose logits
    predict each of its continuation tokens; ``parents[i]`` is node i's parent column (-1 for
    the first token)."""

    tokens: list[int]
    depths: list[int]
    parents: list[int]
    kept: int  # the last ``kept`` nodes are those whose logits are needed
    predictors: list[list[int]]

    @property
    def width(self) -> int:
        return len(self.tokens)

    def ancestors(self) -> np.ndarray:
        """[width, width] bool: node i may attend to node j (j is i or one of its ancestors)."""
        n = self.width
        allowed = np.zeros((n, n), dtype=bool)
        # In row order a child may precede its parent (needed nodes go last); by depth, every
        # parent comes first.
        for node in sorted(range(n), key=self.depths.__getitem__):
            parent = self.parents[node]
            if parent >= 0:
                allowed[node] = allowed[parent]
            allowed[node, node] = True
        return allowed


def build_tree(requests: list[tuple[Sequence, Sequence]]) -> TokenTree:
    """The trie of ``requests`` ((context, continuation) token pairs, each non-empty)."""
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    children: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for context, continuation in requests:
        parent, path = -1, []
        for token in context + continuation[:-1]:
            node = children.get((parent, token))
            if node is None:
                node = children[parent, token] = len(tokens)
                tokens.append(token)
                parents.append(parent)
                depths.append(len(path))
            path.append(node)
            parent = node
        paths.append(path)

    # The node at depth i predicts token i+1 of the request: the context's last node onwards.
    predicting = [
        path[len(context) - 1 : len(context) - 1 + len(continuation)]
        for path, (context, continuation) in zip(paths, requests, strict=True)
    ]
    needed = {node for nodes in predicting for node in nodes}
    order = [n for n in range(len(tokens)) if n not in needed] + sorted(needed)
    column = {node: col for col, node in enumerate(order)}
    return TokenTree(
        tokens=[tokens[node] for node in order],
        depths=[depths[node] for node in order],
        parents=[column[parents[node]] if parents[node] >= 0 else -1 for node in order],
        kept=len(needed),
        predictors=[[column[node] for node in nodes] for nodes in predicting],
    )
