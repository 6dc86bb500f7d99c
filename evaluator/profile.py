"""python -m evaluator.profile: measure this host for the performance model (evaluator.predict), in
minutes. One single-device engine of the model times its decode steps against batch size and
context length, its prefills and its start-up (evaluator.predict.engine); a probe times one
device's memory bandwidth and the all-reduce between the devices at the sizes a tensor-parallel
step sends (evaluator.predict.probe: NCCL on GPUs, gloo on CPU devices, no model). The result is
one file, profile.json, that `python -m evaluator.compare --predict --profile FILE` reads. A stored
single-device run (--from-run: offline, or serving levels) can stand in for the engine part.

    python -m evaluator.profile --engine vllm --model models/qwen2.5-coder-0.5b-instruct --gpus 2 \
        --out profile.json -- --device cpu --max-model-len 2048 --engine-kwargs '{"enforce_eager": true}'
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from evaluator.errors import UsageError
from evaluator.predict.records import ModelShape, Profile, write_profile
from evaluator.records import RunConfig
from launchers.engines.base import ENGINES


@dataclass(frozen=True)
class Options:
    """How much to measure."""
    batches: tuple[int, ...] = (1, 8, 32, 128, 256)
    contexts: tuple[int, ...] = (128, 1024)     # prompt tokens; each capped by the context length
    decode_tokens: int = 32
    repeats: int = 2
    max_call_s: float = 30.0
    probe: bool = True


def ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} {text!r}: give comma-separated whole numbers") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{what} {text!r}: every value must be at least 1")
    return values


def model_shape(cfg: RunConfig) -> ModelShape:
    """The model of a run config, read from its folder (config.json and the weight files)."""
    from evaluator.memory import DTYPE_BYTES, kv_dtype_bytes, model_config, run_dtype, weight_bytes
    model = model_config(cfg.model_folder)
    weights = weight_bytes(cfg, model)
    if not model or weights is None:
        raise UsageError(f"--model {cfg.model}: its config.json and weight files must be readable locally to profile it")
    return ModelShape.from_config(model, weights, DTYPE_BYTES.get(run_dtype(cfg, model), 2), kv_dtype_bytes(cfg, model))


def probe_sizes(shape: ModelShape, most_tokens: int) -> list[int]:
    from evaluator.predict.probe import message_sizes
    return message_sizes(shape.hidden * shape.dtype_bytes, most_tokens)


def build(cfg: RunConfig, tps: list[int], options: Options, console: Console) -> Profile:
    """Profile cfg's single-device layout with a real engine, and probe the tp sizes in `tps`."""
    from evaluator.hosts import host_facts
    from evaluator.memory import device_bytes
    from evaluator.pool import engine_spec
    from evaluator.predict import engine
    from launchers.engines.base import batch_limits
    shape = model_shape(cfg)
    facts = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    max_seqs, max_tokens = batch_limits(cfg.engine, engine_spec(cfg), False, device_bytes(cfg))
    context = cfg.max_model_len or (1 << 30)
    contexts = sorted({min(c, context - options.decode_tokens - 2) for c in options.contexts})
    if contexts[0] < 1:
        raise UsageError(f"--decode-tokens {options.decode_tokens} leaves no room for a prompt in a context of {context}")
    bandwidth, points, backend = probe_now(cfg, shape, tps, max_tokens, options, console)
    measured = engine.measure(cfg, list(options.batches), contexts, options.decode_tokens, options.repeats,
                              options.max_call_s, console, max_seqs)
    return Profile(engine=cfg.engine, device=cfg.device, device_name=facts.device_name, model=cfg.model, shape=shape,
                   engine_kwargs=dict(cfg.engine_kwargs), max_model_len=cfg.max_model_len,
                   cpu_cores_per_device=cfg.cpu_cores_per_device, startup_s=measured.startup_s,
                   kv_cache_tokens=measured.kv_cache_tokens, decode=measured.decode, prefill=measured.prefill,
                   bandwidth_bytes_per_s=bandwidth, bandwidth_source=f"read of a large tensor on 1 {cfg.device} device"
                   if bandwidth else "", allreduce=tuple(points), allreduce_source=backend, workload=measured.workload,
                   source="engine", created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   versions=facts.versions)


def probe_now(cfg: RunConfig, shape: ModelShape, tps: list[int], max_tokens: int | None, options: Options,
              console: Console) -> tuple[float | None, list, str]:
    """(bandwidth, all-reduce points of every tp size, backend); nothing without options.probe."""
    from evaluator.predict.probe import probe
    if not options.probe:
        return None, [], ""
    bandwidth, points, backend = None, [], ""
    for n in sorted(set(tps) | {1}):
        if n == 1 and len(set(tps) - {1}):
            continue                # a group's rank 0 reads the bandwidth too
        console.print(f"profile: probing {n} {cfg.device} device(s) (bandwidth" + (", all-reduce)" if n > 1 else ")"),
                      highlight=False)
        try:
            bw, found, backend = probe(cfg.device, n, probe_sizes(shape, max_tokens or 8192), cfg.cpu_cores_per_device)
        except RuntimeError as e:
            raise UsageError(f"the device probe failed: {e}") from None
        bandwidth = bandwidth or bw
        points += found
    return bandwidth, points, backend


def from_runs(folders: list[str], cfg: RunConfig | None, tps: list[int], options: Options, console: Console) -> Profile:
    """A profile whose engine part is stored single-device runs (offline and/or serving)."""
    from evaluator.predict.stored import observations, read_summary
    offline, serve, summaries = [], [], []
    for folder in folders:
        s = read_summary(Path(folder))
        o, l = observations(s, folder)
        offline += o
        serve += l
        summaries.append(s)
    first = summaries[0]
    if len({(s.config.engine, s.config.device, s.device_name) for s in summaries}) > 1:
        raise UsageError("--from-run: the runs differ in engine or device; a profile is one engine on one device")
    cfg = cfg or first.config
    shape = model_shape(cfg)
    bandwidth, points, backend = probe_now(cfg, shape, tps, None, options, console) if options.probe else (None, [], "")
    kv = next((r.kv_cache_tokens for s in summaries for r in s.replicas if getattr(r, "kv_cache_tokens", None)), None)
    return Profile(engine=first.config.engine, device=first.config.device, device_name=first.device_name,
                   model=first.config.model, shape=shape, engine_kwargs=dict(first.config.engine_kwargs),
                   max_model_len=first.config.max_model_len, cpu_cores_per_device=first.config.cpu_cores_per_device,
                   startup_s=min(s.startup_s for s in summaries), kv_cache_tokens=kv, offline=tuple(offline),
                   serve=tuple(serve), bandwidth_bytes_per_s=bandwidth,
                   bandwidth_source=f"read of a large tensor on 1 {first.config.device} device" if bandwidth else "",
                   allreduce=tuple(points), allreduce_source=backend, source=", ".join(folders),
                   created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), versions=first.versions)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.profile",
        description="Measure this host for the performance model: one single-device engine's decode step time "
                    "against batch size and context, its prefill and start-up, one device's memory bandwidth, and "
                    "the all-reduce between --gpus devices. Writes profile.json for python -m evaluator.compare "
                    "--predict --profile FILE. Flags after -- are the evaluator's (python -m evaluator --help): "
                    "--device, --engine-kwargs, --max-model-len, --cpu-cores-per-device, --max-tokens, ...",
        epilog="Example: python -m evaluator.profile --engine vllm --model M --gpus 2 --out profile.json -- "
               "--device cpu --max-model-len 2048. From a stored run instead of an engine: --from-run "
               "results/compare-x/vllm-single (its model folder must still be readable).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", default="vllm", help=f"one of {', '.join(sorted(ENGINES))}")
    p.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct", help="local model folder")
    p.add_argument("--data", default="data/gsm8k_test.parquet",
                   help="parquet of the prompts whose answer lengths the profile learns when answers stop at EOS")
    p.add_argument("--gpus", type=int, default=2,
                   help="devices the layouts will use: the all-reduce is probed between every tp size dividing it "
                        "(1: bandwidth only)")
    p.add_argument("--out", default="profile.json", help="the profile file to write")
    p.add_argument("--batches", default="1,8,32,128,256", help="decode batch sizes (sequences) to time")
    p.add_argument("--contexts", default="128,1024",
                   help="prompt lengths in tokens to time them at (capped by the context length)")
    p.add_argument("--decode-tokens", type=int, default=32, help="decode steps per timed call (T)")
    p.add_argument("--repeats", type=int, default=2, help="times each call is made (the fastest counts)")
    p.add_argument("--max-call-s", type=float, default=30.0,
                   help="leave out a batch whose projected generate call would take longer than this, in seconds")
    p.add_argument("--no-probe", action="store_true", help="no bandwidth or all-reduce probe (a GPU's datasheet "
                                                           "figures stand in; CPU devices then cannot be predicted)")
    p.add_argument("--from-run", metavar="DIR[,DIR]",
                   help="stored single-device run folder(s) (offline and/or serving) instead of an engine")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, RunConfig, Options]:
    from evaluator.plan import evaluator_args, layout_config
    from evaluator.cli import split_passthrough
    from evaluator.layout import Candidate, Layout
    own, passthrough = split_passthrough(argv)
    args = build_parser().parse_args(own)
    if args.engine not in ENGINES:
        raise UsageError(f"--engine: unknown engine {args.engine!r}; choose from {', '.join(sorted(ENGINES))}")
    if args.gpus is None or args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {args.gpus})")
    if args.decode_tokens < 2 or args.repeats < 1 or not args.max_call_s > 0:
        raise UsageError("--decode-tokens must be at least 2, --repeats at least 1 and --max-call-s above 0")
    options = Options(ints(args.batches, "--batches"), ints(args.contexts, "--contexts"), args.decode_tokens,
                      args.repeats, args.max_call_s, not args.no_probe)
    if args.from_run is None and not Path(args.data).is_file():
        raise UsageError(f"data file not found: {args.data} (make it with: python -m datasets_prep gsm8k)")
    cfg = None
    if args.from_run is None or Path(args.model).is_dir():
        data = str(Path(args.data).resolve()) if Path(args.data).is_file() else args.data
        cfg = layout_config(evaluator_args(passthrough), Candidate(args.engine, Layout()), "offline",
                            args.model, data, Path(args.out).parent.resolve(), "profile")
    return args, cfg, options


def main(argv: list[str] | None = None) -> int:
    console = Console(stderr=True)
    try:
        args, cfg, options = parse(sys.argv[1:] if argv is None else argv)
        tps = [n for n in range(2, args.gpus + 1) if args.gpus % n == 0]
        if args.from_run:
            profile = from_runs([f for f in args.from_run.split(",") if f.strip()], cfg, tps, options, console)
        else:
            profile = build(cfg, tps, options, console)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_profile(profile, Path(args.out))
    console.print(f"profile written: {args.out} ({len(profile.decode)} decode steps, {len(profile.prefill)} prefills, "
                  f"{len(profile.offline) + len(profile.serve)} stored measurements, {len(profile.allreduce)} all-reduce "
                  f"sizes)", highlight=False)
    print(json.dumps({"profile": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
