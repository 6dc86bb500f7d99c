"""python -m evaluator: evaluate one layout, offline (one batch) or serving (servers under load).

Reads top to bottom: settings (flags, or the run folder for --resume) -> prompts -> checks ->
config.json -> the driver -> the table -> the summary as the last stdout line. Bad input exits 2
with one line before any engine starts, and nothing is written.

    python -m evaluator --engine vllm --mode dp --gpus 2 --limit 16
    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve --concurrency 1,8 --limit 16
"""
from __future__ import annotations

import errno
import json
import sys

from rich.console import Console
from rich.text import Text


def _say(console: Console, head: str, style: str, message: str) -> None:
    console.print(Text(head, style=style) + Text(" " + message), soft_wrap=True)   # one line, for whoever reads it


def answers_fingerprint(cfg) -> dict:
    """A quantised checkpoint's answers are paired with its base model's: its config.json says so
    with the base model's fingerprint (evaluator.report.runs groups runs by it)."""
    from evaluator.fingerprint import fingerprint
    return {"answers_fingerprint": fingerprint(cfg.data, cfg.base_model)} if cfg.base_model else {}


def traffic_file(cfg) -> str | None:
    """The serving run's traffic file, when its load is one (its hash joins the fingerprint)."""
    if cfg.workload != "serve" or cfg.serve.traffic == "gsm8k" or cfg.serve.traffic.startswith("synthetic:"):
        return None
    return cfg.serve.traffic


def load_run_traffic(cfg):
    """The serving run's traffic other than GSM8K, read and checked now, before any engine starts
    (TrafficError: one line, exit 2); None for GSM8K and offline runs."""
    if cfg.workload != "serve" or cfg.serve.traffic == "gsm8k":
        return None
    from evaluator.data import load_tokenizer
    from evaluator.modelinfo import context_length
    from evaluator.traffic import TrafficError, load_traffic
    try:
        tokenizer = load_tokenizer(cfg.model_folder)
    except (OSError, ValueError) as e:
        raise TrafficError(f"--model {cfg.model}: cannot load its tokenizer to measure the traffic ({e})") from None
    traffic = load_traffic(cfg.serve.traffic, tokenizer, max_model_len=context_length(cfg),
                           default_max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed, limit=cfg.limit)
    if cfg.serve.level_kind == "replay" and not traffic.has_timestamps:
        raise TrafficError(f"--replay needs a timestamp on every request of {traffic.name}")
    return traffic


def main(argv: list[str] | None = None) -> int:
    from evaluator.checks import check_lengths
    from evaluator.cli import build_parser, explicit_flags, new_run, resume_run
    from evaluator.collector import CollectError
    from evaluator.data import DataError, load_prompts
    from evaluator.errors import Interrupted, RunFailed, UsageError
    from evaluator.fingerprint import changes, environment, environment_changes, fingerprint
    from evaluator.hosts import host_facts
    from evaluator.store import RunDir
    from evaluator.traffic import TrafficError

    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        cfg, run_id, path = resume_run(args, explicit_flags(argv)) if args.resume else new_run(args)
        prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
        traffic = load_run_traffic(cfg)
        if traffic is None:
            check_lengths(prompts, cfg)
        from evaluator.serve import check_serving_plan
        check_serving_plan(cfg, prompts, traffic)
        run_dir = RunDir(path)
        now, env_now = fingerprint(cfg.data, cfg.model, traffic_file(cfg)), environment(cfg.engine, cfg.device)
        if args.resume:
            saved = run_dir.read_config_file()
            changed = changes(saved.get("fingerprint", {}), now)
            if changed:
                raise UsageError(f"--resume {path}: {', '.join(changed)} changed since the run started; its answers "
                                 f"would mix two sources (start a new run)")
            moved = environment_changes(saved.get("environment", {}), env_now)
            if moved:
                raise UsageError(f"--resume {path}: the environment changed since the run started ({'; '.join(moved)}); "
                                 f"its numbers would mix two setups (start a new run)")
        host = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    except (UsageError, DataError, TrafficError) as e:
        parser.exit(2, f"error: {e}\n")

    from evaluator import offline, serve
    from evaluator.pool import replica_count
    from evaluator.progress import RunProgress
    from evaluator.report.tables import print_table
    from evaluator.report.runs import load_runs

    if not args.resume:
        try:
            run_dir.write_config(cfg, {"run_id": run_id, "fingerprint": now, "environment": env_now,
                                       **answers_fingerprint(cfg)})
        except OSError as e:
            _say(err, "error:", "red", f"cannot write to {run_dir.path}: {e.strerror}")
            return 1
    err.print(f"run {run_id}: {cfg.engine} {cfg.workload} {cfg.mode} dp={cfg.dp} tp={cfg.tp} on {cfg.device}, "
              f"{len(prompts)} prompts -> {run_dir.path}")
    try:
        with RunProgress(replica_count(cfg), len(prompts), err) as progress:
            if cfg.workload == "serve":
                summary = serve.execute(cfg, run_id, run_dir, prompts, host, listener=progress, traffic=traffic)
            else:
                summary = offline.execute(cfg, run_id, run_dir, prompts, host, listener=progress)
    except UsageError as e:
        _say(err, "error:", "red", str(e))
        return 2
    except (RunFailed, CollectError) as e:
        _say(err, "error:", "red", str(e))
        err.print(f"what finished is kept in {run_dir.path}; resume: python -m evaluator --resume {run_dir.path}")
        return 1
    except (KeyboardInterrupt, Interrupted):
        err.print(f"[yellow]interrupted[/]: every engine was shut down; resume: python -m evaluator --resume {run_dir.path}")
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        _say(err, "error:", "red", f"cannot write to {run_dir.path}: {e.strerror} (the disk holding it is full or "
                                   f"read-only); every engine was shut down and what finished is kept whole; free "
                                   f"space, then resume: python -m evaluator --resume {run_dir.path}")
        return 1
    for line in summary.failures:
        _say(err, "replica failure:", "yellow", line)
    if not args.no_table:
        print_table(load_runs(run_dir.path.parent), Console(), highlight=run_id)
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
