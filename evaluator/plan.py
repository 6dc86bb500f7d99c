"""What a comparison's plan (python -m evaluator.compare) and a profile's single-device run
(python -m evaluator.profile) are built from: every candidate layout of the engines for a device
count, and one layout's RunConfig from the evaluator flags given after `--`, parsed once and checked
by the run's own code.

    python -c "from evaluator.plan import candidates; print([c.label for c in candidates(['vllm'], 4, 'serve')])"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluator.errors import UsageError
from evaluator.layout import MODES, Candidate, Layout
from evaluator.records import RunConfig
from launchers.engines.base import native_dp_workloads, router_of

ONLINE_QUANTIZATION = ("fp8",)        # --quantized names the engines quantise to themselves (no checkpoint file)


def candidates(engines: list[str], gpus: int, workload: str, modes: tuple[str, ...] = MODES,
               native: bool = True, router_policies: dict[str, tuple[str, ...]] | None = None) -> list[Candidate]:
    """Every layout of `gpus` devices, per engine: single (1 device), dp=N, tp=N, each hybrid
    D x T = N with both above 1; dp=N inside the engine (native) where the engine has its own DP
    for this workload; and, serving, dp=N servers behind the engine's own router once per policy
    (router_policies: engine -> policies; default: the router's own default policy; an engine
    left out of a given dict gets none). Whether a layout can run on this model and host (the
    router installed, the model's heads...) is the checks' job: they skip it with the reason."""
    out: list[Candidate] = []
    for engine in engines:
        if "single" in modes:
            out.append(Candidate(engine, Layout()))
        if gpus < 2:
            continue
        if "dp" in modes:
            out.append(Candidate(engine, Layout(gpus, 1)))
            if native and workload in native_dp_workloads(engine):
                out.append(Candidate(engine, Layout(gpus, 1, dp_backend="native")))
            router = router_of(engine)
            if workload == "serve" and router is not None:
                policies = (router.default_policy,) if router_policies is None else router_policies.get(engine, ())
                out += [Candidate(engine, Layout(gpus, 1, dp_backend="router", router_policy=p)) for p in policies]
        if "tp" in modes:
            out.append(Candidate(engine, Layout(1, gpus)))
        if "hybrid" in modes:
            out += [Candidate(engine, Layout(d, gpus // d)) for d in range(2, gpus)
                    if gpus % d == 0 and gpus // d > 1]
    return out


def evaluator_args(passthrough: list[str]) -> argparse.Namespace:
    """The flags after `--`, parsed once by the evaluator's own parser."""
    from evaluator.cli import parse_flags
    owned = {"--engine", "--mode", "--gpus", "--dp", "--tp", "--pp", "--ep", "--dp-backend", "--router-policy",
             "--workload", "--model", "--data",
             "--output-dir", "--run-id", "--resume", "--tokenizer", "--base-model"}
    given = sorted({a.split("=")[0] for a in passthrough if a.split("=")[0] in owned})
    if given:
        raise UsageError(f"{', '.join(given)} after -- belong to the comparison itself (it sets them per layout)")
    try:
        return parse_flags(passthrough)
    except UsageError as e:
        raise UsageError(f"the flags after -- are not evaluator flags: {e}") from None


def layout_config(base: argparse.Namespace, c: Candidate, workload: str, model: str, data: str, out: Path,
                  run_id: str, quantized: str | None = None) -> RunConfig:
    """One layout's RunConfig from the comparison's evaluator flags, checked (UsageError: skipped);
    with quantized, the single-device row of that checkpoint of the model, or of the model quantised
    online by the engine (ONLINE_QUANTIZATION: quantization=fp8 added to its engine kwargs)."""
    from evaluator.cli import config_from_args, for_workload
    if quantized in ONLINE_QUANTIZATION:
        kwargs = {**json.loads(base.engine_kwargs or "{}"), "quantization": quantized}
        base = argparse.Namespace(**{**vars(base), "engine_kwargs": json.dumps(kwargs)})
        extra = {"model": model, "base_model": model}
    elif quantized:
        extra = {"model": quantized, "tokenizer": model, "base_model": model}
    else:
        extra = {"model": model}
    lay = c.layout
    args = for_workload(base, workload, engine=c.engine, mode=lay.mode, gpus=lay.devices,
                        dp=lay.dp if lay.mode == "hybrid" else None, tp=lay.tp if lay.mode == "hybrid" else None,
                        dp_backend=lay.dp_backend, router_policy=lay.router_policy, data=data, output_dir=str(out),
                        run_id=run_id, **extra)
    return config_from_args(args)
