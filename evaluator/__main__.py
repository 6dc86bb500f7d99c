"""python -m evaluator: evaluate one layout. Bad input exits 2 with one line and writes nothing.

    python -m evaluator --engine vllm --mode dp --gpus 2 --limit 16
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    from evaluator.cli import UsageError, build_parser, config_from_args, default_run_id
    from evaluator.collector import CollectError
    from evaluator.data import DataError, load_tokenizer, read_rows, render_prompts
    from evaluator.store import CONFIG, RunDir

    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        if args.resume:
            run_dir = RunDir(args.resume)
            if not (run_dir.path / CONFIG).is_file():
                raise UsageError(f"--resume {args.resume}: no {CONFIG} there, not a run folder")
            if run_dir.finished:
                raise UsageError(f"--resume {args.resume}: that run already finished (summary.json exists)")
            cfg = run_dir.read_config()
            run_id = run_dir.path.name
        else:
            cfg = config_from_args(args)
            run_id = args.run_id or default_run_id(cfg)
            run_dir = RunDir(Path(args.output_dir) / run_id)
            if run_dir.path.exists() and any(run_dir.path.iterdir()):
                raise UsageError(f"{run_dir.path} already exists; use --resume {run_dir.path} or another --run-id")
        rows = read_rows(cfg.data)
        if cfg.limit:
            rows = rows[:cfg.limit]
        try:
            tokenizer = load_tokenizer(cfg.model)
        except (OSError, ValueError) as e:
            raise UsageError(f"--model {cfg.model}: cannot load its tokenizer ({str(e).splitlines()[0][:200]})") from None
        prompts = render_prompts(rows, tokenizer)
    except (UsageError, DataError) as e:
        parser.exit(2, f"error: {e}\n")

    from evaluator.run import Interrupted, RunFailed, execute, replica_count
    from evaluator.progress import RunProgress
    from evaluator import report

    run_dir.write_config(cfg, {"run_id": run_id})
    err.print(f"run {run_id}: {cfg.engine} {cfg.mode} dp={cfg.dp} tp={cfg.tp} on {cfg.device}, "
              f"{len(prompts)} prompts -> {run_dir.path}")
    try:
        with RunProgress(replica_count(cfg), len(prompts), err) as progress:
            summary = execute(cfg, run_id, run_dir, prompts, listener=progress)
    except (RunFailed, CollectError) as e:
        err.print(f"[red]error:[/] {e}")
        err.print(f"finished chunks are kept in {run_dir.path}/partial.jsonl; resume: python -m evaluator --resume {run_dir.path}")
        return 1
    except (KeyboardInterrupt, Interrupted):
        err.print(f"[yellow]interrupted[/]: every engine was shut down; resume: python -m evaluator --resume {run_dir.path}")
        return 130
    for line in summary.failures:
        err.print(f"[yellow]replica failure:[/] {line}")
    if not args.no_table:
        report.print_table(report.load_runs(run_dir.path.parent), Console(), highlight=run_id)
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
