"""A vLLM V1 logits processor that forbids given tokens at given output positions.

Critical-token resampling (cDPO, Lin et al. 2024) continues a trajectory from
the prefix before its critical token with that token banned at that position.
vLLM loads this class by name ("ponder.engine.logits:MaskTokensAtPositions");
each request switches it on through `SamplingParams.extra_args`:

    extra_args={"ponder_mask": [position, token_id, position, token_id, ...]}

where position counts generated tokens (0 = the first one). The list is flat
because vLLM's HTTP `vllm_xargs` takes flat lists only. Requests without
the key are untouched, and a masked request is untouched at every other position.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

KEY = "ponder_mask"


class MaskTokensAtPositions(AdapterLogitsProcessor):
    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        mask = (params.extra_args or {}).get(KEY)
        if mask is None:
            return
        if not isinstance(mask, list) or len(mask) % 2 or not all(isinstance(x, int) and x >= 0 for x in mask):
            raise ValueError(f"{KEY} must be a flat list of position, token_id pairs (non-negative ints)")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams):
        mask = (params.extra_args or {}).get(KEY)
        if not mask:
            return None
        banned: dict[int, list[int]] = defaultdict(list)
        for position, token_id in zip(mask[::2], mask[1::2]):
            banned[position].append(token_id)

        def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            tokens = banned.get(len(output_ids))
            if tokens:
                logits[[t for t in tokens if t < logits.shape[-1]]] = float("-inf")
            return logits

        return apply
