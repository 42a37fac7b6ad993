"""VllmEngine: vLLM's AsyncLLM in-process. The only module that imports vLLM's engine.

One engine serves one base model and any number of LoRA adapters. On vLLM's CPU
build it turns chunked prefill off: a seeded request whose prompt is split
across scheduler steps makes the model runner rewind that request's torch
generator (`gen.set_offset(gen.get_offset() - 4)` in gpu_model_runner), which a
CPU generator cannot do ("CPU Generator does not use offset"): the engine dies
and takes every request with it. With chunked prefill off, vLLM sizes a step's
token budget to at least the model's own context length (8k for SmolLM2), so no
prompt is ever split. See tests/e2e for the load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmDead

from ponder.engine import configuration_decilm
from ponder.engine.protocol import (
    EngineDeadError,
    EngineRequestError,
    ModelCard,
    Output,
    Prompt,
    SamplingSpec,
    TokenLogprob,
)

log = logging.getLogger("ponder.engine")

MASK_PROCESSOR = "ponder.engine.logits:MaskTokensAtPositions"
MIN_STEP_TOKENS = 4096


@dataclass(frozen=True)
class VllmConfig:
    """How to start vLLM; CPU-friendly defaults (see ../shared/VLLM_CPU.md)."""

    model: str
    name: str | None = None  # served id; default: the folder name
    loras: tuple[tuple[str, str], ...] = ()  # (name, path)
    max_model_len: int | None = None
    enforce_eager: bool = True
    max_logprobs: int = 20
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on the CPU build
    gpu_memory_utilization: float | None = None  # default: 0.3 on CPU, 0.9 on GPU
    seed: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)  # anything else AsyncEngineArgs takes

    @property
    def served_name(self) -> str:
        return self.name or Path(self.model.rstrip("/")).name


def _lora_rank(path: str) -> int:
    cfg = Path(path) / "adapter_config.json"
    return int(json.loads(cfg.read_text()).get("r", 16)) if cfg.exists() else 16


def ponder_child(folder: str) -> bool:
    """A Puzzle child exported by ponder: its config class is ponder's own file, byte for byte,
    so its "remote code" may be trusted without --engine-arg trust_remote_code=true."""
    shipped = Path(folder, "configuration_decilm.py")
    return shipped.exists() and shipped.read_bytes() == Path(configuration_decilm.__file__).read_bytes()


class VllmEngine:
    """Engine protocol over vllm.v1.engine.async_llm.AsyncLLM."""

    def __init__(self, cfg: VllmConfig):
        self.cfg = cfg
        self.name = cfg.served_name
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        kwargs: dict[str, Any] = dict(
            model=cfg.model,
            served_model_name=self.name,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            max_logprobs=cfg.max_logprobs,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization or (0.3 if on_cpu else 0.9),
            enable_prefix_caching=True,
            logits_processors=[MASK_PROCESSOR],
            disable_log_stats=False,
        )
        if cfg.loras:
            kwargs.update(enable_lora=True, max_loras=len(cfg.loras),
                          max_lora_rank=max(_lora_rank(p) for _, p in cfg.loras))
        if ponder_child(cfg.model):
            kwargs["trust_remote_code"] = True
        kwargs.update(cfg.engine_args)
        if on_cpu:
            # Never split a prompt across steps (see the module docstring). vLLM then sizes a step's
            # budget to the model's context; ponder keeps it at least MIN_STEP_TOKENS (prefills of many
            # short prompts batch into one step).
            kwargs["enable_chunked_prefill"] = False
        config = AsyncEngineArgs(**kwargs).create_engine_config()
        if on_cpu and "max_num_batched_tokens" not in cfg.engine_args \
                and config.scheduler_config.max_num_batched_tokens < MIN_STEP_TOKENS:
            kwargs["max_num_batched_tokens"] = MIN_STEP_TOKENS
            config = AsyncEngineArgs(**kwargs).create_engine_config()
        self.llm = AsyncLLM.from_vllm_config(config)
        self.max_model_len: int = self.llm.model_config.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model,
                                                       trust_remote_code=kwargs.get("trust_remote_code", False))
        self.loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(cfg.loras)}
        self.created = int(time.time())

    def models(self) -> list[ModelCard]:
        base = ModelCard(id=self.name, root=self.cfg.model, max_model_len=self.max_model_len,
                         created=self.created)
        return [base] + [ModelCard(id=n, root=r.lora_path, parent=self.name,
                                   max_model_len=self.max_model_len, created=self.created)
                         for n, r in self.loras.items()]

    def _sampling_params(self, spec: SamplingSpec, stream: bool, prompt_logprobs: int | None = None, n: int = 1):
        return SamplingParams(
            n=n,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            stop=list(spec.stop) or None,
            logprobs=spec.logprobs,
            prompt_logprobs=prompt_logprobs,
            presence_penalty=spec.presence_penalty,
            frequency_penalty=spec.frequency_penalty,
            logit_bias=dict(spec.logit_bias) or None,
            ignore_eos=spec.ignore_eos,
            extra_args={"ponder_mask": [x for m in spec.masked for x in m]} if spec.masked else None,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )

    def _lora(self, model: str | None):
        if model is None or model == self.name:
            return None
        if model not in self.loras:
            raise EngineRequestError(f"model {model!r} is not served by this engine")
        return self.loras[model]

    def _prompt(self, prompt: Prompt) -> dict[str, Any]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        return {"prompt_token_ids": ids}

    async def generate(self, prompt: Prompt, spec: SamplingSpec, request_id: str, *,
                       model: str | None = None, stream: bool = True) -> AsyncIterator[Output]:
        n_done = 0
        try:
            params = self._sampling_params(spec, stream)
            async for out in self.llm.generate(self._prompt(prompt), params, request_id,
                                               lora_request=self._lora(model)):
                seq = out.outputs[0]
                n_done += len(seq.token_ids)
                yield Output(
                    text=seq.text,
                    token_ids=tuple(seq.token_ids),
                    logprobs=self._logprobs(seq.token_ids, seq.logprobs) if spec.logprobs is not None else None,
                    finish_reason=seq.finish_reason,
                    prompt_tokens=len(out.prompt_token_ids or ()),
                    completion_tokens=n_done,
                )
        except Exception as e:  # map vLLM's errors onto the seam's
            raise self._map_error(e) from e

    async def sample(self, prompt: Prompt, spec: SamplingSpec, n: int, request_id: str, *,
                     model: str | None = None) -> list[Output]:
        # vLLM fans SamplingParams(n) out into n child requests after one prefill; child i is
        # seeded seed + i (vllm/v1/engine/parallel_sampling.py). FINAL_ONLY returns all n at
        # once. Cancelling this call makes AsyncLLM.generate abort the parent, and so the children.
        final = None
        try:
            params = self._sampling_params(spec, stream=False, n=n)
            async for out in self.llm.generate(self._prompt(prompt), params, request_id,
                                               lora_request=self._lora(model)):
                final = out
        except Exception as e:
            raise self._map_error(e) from e
        assert final is not None
        n_prompt = len(final.prompt_token_ids or ())
        return [Output(text=seq.text, token_ids=tuple(seq.token_ids),
                       logprobs=self._logprobs(seq.token_ids, seq.logprobs) if spec.logprobs is not None else None,
                       finish_reason=seq.finish_reason, prompt_tokens=n_prompt, completion_tokens=len(seq.token_ids))
                for seq in sorted(final.outputs, key=lambda s: s.index)]

    async def score(self, prompt: Sequence[int], continuation: Sequence[int], request_id: str, *,
                    model: str | None = None, top_logprobs: int = 0) -> list[TokenLogprob]:
        params = self._sampling_params(SamplingSpec(max_tokens=1, temperature=0.0), stream=False,
                                       prompt_logprobs=top_logprobs)
        ids = list(prompt) + list(continuation)
        final = None
        try:
            async for out in self.llm.generate({"prompt_token_ids": ids}, params, request_id,
                                               lora_request=self._lora(model)):
                final = out
        except Exception as e:
            raise self._map_error(e) from e
        assert final is not None and final.prompt_logprobs is not None
        positions = list(final.prompt_logprobs)[len(prompt):]
        return self._logprobs(list(continuation), positions)

    def _logprobs(self, token_ids: Sequence[int], positions) -> tuple[TokenLogprob, ...]:
        out = []
        for tok, pos in zip(token_ids, positions):
            ranked = sorted(pos.items(), key=lambda kv: -kv[1].logprob)
            out.append(TokenLogprob(
                token_id=tok,
                token=pos[tok].decoded_token or self.tokenizer.decode([tok]),
                logprob=pos[tok].logprob,
                top=tuple((t, lp.decoded_token or "", lp.logprob) for t, lp in ranked),
            ))
        return tuple(out)

    def _map_error(self, e: Exception) -> Exception:
        if isinstance(e, VllmDead) or self.is_dead:
            return EngineDeadError(str(e) or "the vLLM engine is dead")
        if isinstance(e, (ValueError, TypeError, VLLMValidationError)):
            return EngineRequestError(str(e))
        return e

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def check_health(self) -> None:
        if self.is_dead:
            raise EngineDeadError("the vLLM engine is dead")

    @property
    def is_dead(self) -> bool:
        return bool(self.llm.errored)

    def num_unfinished(self) -> int:
        return self.llm.get_num_unfinished_requests()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.llm.shutdown)  # blocks for seconds while the engine core exits


async def start_engines(configs: Sequence[VllmConfig]) -> list[VllmEngine]:
    """Several engines, started side by side (each start is mostly its engine processes importing
    vLLM). On the CPU build, vLLM binds every engine's compute threads to the same core ('auto'),
    so several engines would start, and then run, on one core while the others idle: unless the
    user chose a binding, several engines run unbound (measured on 2 cores, the default model and
    its contrastive pair: ready in 40 s unbound against 59 s bound, and 70 s one after another)."""
    if len(configs) > 1 and current_platform.is_cpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        log.info("%d engines on the CPU: their threads run unbound (VLLM_CPU_OMP_THREADS_BIND=nobind)", len(configs))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    started = await asyncio.gather(*(asyncio.to_thread(VllmEngine, c) for c in configs), return_exceptions=True)
    engines = [e for e in started if isinstance(e, VllmEngine)]
    failed = [e for e in started if isinstance(e, BaseException)]
    if failed:
        await asyncio.gather(*(e.aclose() for e in engines))
        raise failed[0]
    return engines
