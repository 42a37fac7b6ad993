"""A scripted OpenAI-compatible upstream (vLLM's /v1/completions dialect) for RemoteEngine tests.

`completion(body)` answers one /v1/completions body: choice i of a seeded call is
made with seed + i (as vLLM's parallel sampling does), so replies are distinct
and reproducible; usage counts the prompt once and every choice's tokens. Unit
tests serve it through httpx.MockTransport; `python -m tests.fake_upstream
--port P --model NAME [--delay S]` serves it over HTTP (a replica to kill).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def reply(seed: int | None, i: int) -> tuple[str, list[int]]:
    """The text and token ids of choice i: the seed (+ i) is in the text, so seeds tell replies apart."""
    s = 0 if seed is None else seed + i
    return f"x = {s}\nAnswer: 7", [10 + s % 100, 11, 12, 13]


def completion(body: dict[str, Any], served_by: str = "") -> dict[str, Any]:
    n = int(body.get("n", 1))
    choices = []
    for i in range(n):
        text, ids = reply(body.get("seed"), i)
        ids = ids[: body.get("max_tokens", 16)]
        choices.append({"index": i, "text": text, "token_ids": ids, "finish_reason": "stop",
                        "prompt_token_ids": body["prompt"]})
    prompt = len(body["prompt"])
    done = sum(len(c["token_ids"]) for c in choices)
    return {"id": "cmpl-fake", "object": "text_completion", "model": body["model"], "served_by": served_by,
            "choices": choices, "usage": {"prompt_tokens": prompt, "completion_tokens": done,
                                          "total_tokens": prompt + done}}


def chunks(body: dict[str, Any]) -> list[str]:
    """SSE lines of a streamed n=1 completion: a token a chunk, usage on each, then [DONE]."""
    text, ids = reply(body.get("seed"), 0)
    pieces = [text[: len(text) // 2], text[len(text) // 2 :], "", ""]
    prompt = len(body["prompt"])
    out = []
    for k, (tid, piece) in enumerate(zip(ids, pieces)):
        last = k == len(ids) - 1
        out.append("data: " + json.dumps({
            "choices": [{"index": 0, "text": piece, "token_ids": [tid], "finish_reason": "stop" if last else None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": k + 1, "total_tokens": prompt + k + 1}}) + "\n\n")
    return out + ["data: [DONE]\n\n"]


def app(model: str, delay: float = 0.0):
    """The upstream as an ASGI app; `delay` seconds pass before each completion answers at all."""
    api = FastAPI()
    api.state.completions = 0  # answered
    api.state.received = 0  # arrived (answered or not yet)

    @api.get("/health")
    async def health():
        return JSONResponse({})

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @api.get("/stats")
    async def stats():
        return {"completions": api.state.completions, "received": api.state.received}

    @api.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        api.state.received += 1
        await asyncio.sleep(delay)
        api.state.completions += 1
        if body.get("stream"):
            async def events():
                for line in chunks(body):
                    yield line

            return StreamingResponse(events(), media_type="text/event-stream")
        return completion(body)

    return api


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    uvicorn.run(app(args.model, args.delay), host="127.0.0.1", port=args.port, log_level="warning")
