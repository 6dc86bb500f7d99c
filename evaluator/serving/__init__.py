"""Serving load client: drive OpenAI-compatible vLLM / SGLang servers and measure TTFT, ITL, TPOT, E2E and goodput."""
