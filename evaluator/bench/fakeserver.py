"""A fast fake OpenAI-compatible chat server for the client-side benchmarks (soak, send lag): it
streams `tokens` chunks `gap_s` apart after `ttft_s` and reports usage, answers /health and a
/metrics page, and does nothing else. It measures the client, never an engine: no end-to-end test
or engine figure comes from it.

    python -m evaluator.bench.fakeserver --port 8011 --tokens 4
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket

from aiohttp import web


def app(tokens: int, ttft_s: float, gap_s: float, log: str | None = None,
        ttft_per_inflight_s: float = 0.0) -> web.Application:
    """log: append each request's messages and max_tokens to this file as a JSON line (a test
    counts what the server received); ttft_per_inflight_s: the first token waits this much longer
    per other request in flight (a server that saturates)."""
    served = {"n": 0, "in_flight": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"messages": body.get("messages"), "max_tokens": body.get("max_tokens")}) + "\n")
        n = min(tokens, int(body.get("max_tokens") or tokens))
        served["in_flight"] += 1
        try:
            return await stream(request, n, ttft_s + ttft_per_inflight_s * (served["in_flight"] - 1))
        finally:
            served["in_flight"] -= 1

    async def stream(request: web.Request, n: int, wait_s: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(d: dict) -> None:
            await resp.write(f"data: {json.dumps(d)}\n\n".encode())
        await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if wait_s:
            await asyncio.sleep(wait_s)
        for i in range(n):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            await send({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
        await send({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}})
        await resp.write(b"data: [DONE]\n\n")
        served["n"] += 1
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"fake:requests_total {served['n']}\nfake:running {served['in_flight']}\n")

    a = web.Application()
    a.router.add_post("/v1/chat/completions", chat)
    a.router.add_get("/health", health)
    a.router.add_get("/metrics", metrics)
    return a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m evaluator.bench.fakeserver", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--ttft-s", type=float, default=0.0)
    p.add_argument("--gap-s", type=float, default=0.0)
    p.add_argument("--log", help="append each request's messages to this JSONL file")
    p.add_argument("--ttft-per-inflight-s", type=float, default=0.0,
                   help="extra first-token wait per other request in flight")
    args = p.parse_args()
    web.run_app(app(args.tokens, args.ttft_s, args.gap_s, args.log, args.ttft_per_inflight_s), host="127.0.0.1",
                port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
