"""Arithmetic on the log-probabilities an engine returns (TokenLogprob): shared by the
strategies (a judge's verdict, critical tokens) and the trainers (cDPO's token weights)."""

from __future__ import annotations

import math

from ponder.engine.protocol import TokenLogprob


def ranked(lp: TokenLogprob) -> tuple[dict[int, float], float]:
    """{token id: log-prob} at one position (its top-k and the token itself), and the floor a token
    outside them is given: the k-th log-prob, an upper bound of its own."""
    top = {t: v for t, _, v in lp.top} | {lp.token_id: lp.logprob}
    return top, min(top.values())


def margin(lp: TokenLogprob, first: int, second: int) -> float:
    """log p(first) - log p(second) at one position (a verdict read from log-probabilities)."""
    top, floor = ranked(lp)
    return top.get(first, floor) - top.get(second, floor)


def contrastive_scores(pos: list[TokenLogprob], neg: list[TokenLogprob], beta: float) -> list[float]:
    """cDPO's token scores (Lin et al. 2024, arXiv:2411.19943):
        s_t = softmax((1 + beta) * logp_pos_t - beta * logp_neg_t)[y_t]
    from a positive and a negative model's log-probs at the same positions. Log-probs differ from
    logits by a per-position constant, so they give the same softmax; it runs over the tokens both
    models report (plus y_t), which is exact when their top-k covers the vocabulary."""
    out = []
    for p, q in zip(pos, neg):
        (lp_pos, floor_pos), (lp_neg, floor_neg) = ranked(p), ranked(q)
        z = {t: (1 + beta) * lp_pos.get(t, floor_pos) - beta * lp_neg.get(t, floor_neg)
             for t in lp_pos.keys() | lp_neg.keys()}
        top = max(z.values())
        log_norm = top + math.log(sum(math.exp(v - top) for v in z.values()))
        out.append(math.exp(z[p.token_id] - log_norm))
    return out
