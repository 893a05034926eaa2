"""Rows of a batch grouped by length, so that little work goes into padding: ``length_groups``
chooses the groups (on the CPU, a pass per group of rows whose padding would cost more than the
pass) and ``crop_rows`` cuts a group out of the batch without the padding none of its rows
needs. Used by :func:`icl_mech.anchors.saliency.saliency`.
"""

from __future__ import annotations

import dataclasses

import torch

from icl_mech.prompt_batch import PromptBatch

# a pass costs about as much as this many padded tokens beyond its rows x length (one CPU
# thread, SmolLM2-135M: small matrix products run below peak speed); rows are grouped so that
# padding is only kept where a separate pass would cost more
PASS_OVERHEAD_TOKENS = 64


def length_groups(model, batch: PromptBatch) -> list[list[int]]:
    """Row indices grouped by length, minimising Σ_groups (rows × longest + pass overhead)
    padded tokens. On the CPU only; elsewhere one group (small passes waste an accelerator)."""
    n = len(batch)
    if n < 2 or torch.device(model.cfg.device).type != "cpu":
        return [list(range(n))]
    lengths = batch.attention_mask.sum(dim=1).tolist()
    order = sorted(range(n), key=lambda row: (lengths[row], row))
    best = [0] + [None] * n  # best[j]: cost of the j shortest rows, cut[j]: where its group starts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * longest + PASS_OVERHEAD_TOKENS
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


def crop_rows(batch: PromptBatch, rows: list[int]) -> PromptBatch:
    """Some rows of a batch, without the left padding none of them needs."""
    index = torch.tensor(rows)
    drop = batch.seq_len - int(batch.attention_mask[index].sum(dim=1).max())

    def shift(positions: list[int]) -> list[int]:
        return [p - drop for p in positions]

    positions = [
        dataclasses.replace(
            row,
            labels=[shift(tokens) for tokens in row.labels],
            demos=[shift(tokens) for tokens in row.demos],
            query=shift(row.query),
            target=row.target - drop,
        )
        for row in (batch.rows[r] for r in rows)
    ]
    return dataclasses.replace(
        batch,
        prompts=[batch.prompts[r] for r in rows],
        tokens=batch.tokens[index, drop:],
        attention_mask=batch.attention_mask[index, drop:],
        roles=batch.roles[index, drop:],
        demo_index=batch.demo_index[index, drop:],
        rows=positions,
        demo_labels=[batch.demo_labels[r] for r in rows] if batch.demo_labels else [],
        pieces=[batch.pieces[r][drop:] for r in rows] if batch.pieces else [],
    )
