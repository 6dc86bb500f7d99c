"""Frozen records passed between the pipeline steps and written to results/.

One dataclass per kind of record: what a run was asked to do (RunConfig), one prompt's work
item (Prompt), one engine answer (Completion), one scored sample (Sample), one replica's timing
(ReplicaTiming) and the run's summary (RunSummary). Units are in the names.

    python -c "from evaluator.records import SCHEMA_VERSION; print(SCHEMA_VERSION)"
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings, in the neutral names both engines translate from."""
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    seed: int = 0
    n: int = 1
    ignore_eos: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; written to config.json before any work starts."""
    engine: str
    mode: str
    gpus: int
    dp: int
    tp: int
    model: str
    data: str
    device: str                      # "cuda" or "cpu"
    sampling: SamplingConfig
    limit: int | None = None
    max_model_len: int | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    cpu_cores_per_device: int = 1
    cpu_memory_fraction: float = 0.5
    sharding: str = "contiguous"
    chunk_size: int | None = None
    dp_backend: str = "ray"           # "ray" (one actor per replica) or "native" (engine's own DP)
    on_replica_failure: str = "rerun"
    replica_timeout_s: float | None = None
    ray_address: str | None = None
    engine_logs: bool = False         # stream the engines' own logs (Ray workers) to stderr

    @property
    def layout(self) -> str:
        return f"{self.dp}x{self.tp}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["sampling"] = SamplingConfig(**d["sampling"])
        return cls(**d)


@dataclass(frozen=True)
class Prompt:
    """One work item: the global index survives sharding, collection and resume."""
    index: int
    text: str                         # the chat-template-rendered prompt the engine sees
    gold: str
    prompt_tokens: int = 0            # estimated from the tokenizer, used by balanced sharding


@dataclass(frozen=True)
class Completion:
    """One engine answer to one prompt (n texts when sampling several)."""
    texts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass(frozen=True)
class Sample:
    """One scored prompt: a line of samples.jsonl."""
    index: int
    rank: int
    response: str
    gold: str
    strict_pred: str | None
    strict_correct: bool
    flexible_pred: str | None
    flexible_correct: bool
    prompt_tokens: int
    completion_tokens: int
    responses: tuple[str, ...] = ()   # all n answers when --n > 1
    strict_maj: str | None = None
    strict_maj_correct: bool | None = None
    flexible_maj: str | None = None
    flexible_maj_correct: bool | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["responses"] = list(self.responses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        d = dict(d)
        d["responses"] = tuple(d.get("responses", ()))
        return cls(**d)


@dataclass(frozen=True)
class ReplicaTiming:
    """What one replica measured about itself (seconds from its own clock)."""
    rank: int
    devices: str                      # CUDA_VISIBLE_DEVICES or the pinned CPU cores
    startup_s: float                  # engine construction
    generate_s: float                 # first generate call start to last generate call end
    prompts: int
    prompt_tokens: int
    completion_tokens: int
    idle_after_finish_s: float = 0.0  # waited for the slowest replica after its last chunk
    chunks: int = 0
    failed: str | None = None         # why it died, when it did


@dataclass(frozen=True)
class RunSummary:
    """summary.json: its presence means the run finished."""
    run_id: str
    config: RunConfig
    prompts: int
    wall_s: float
    startup_s: float                  # slowest replica
    generate_s: float                 # slowest replica
    output_tokens_per_s: float
    prompt_tokens: int
    completion_tokens: int
    strict_accuracy: float
    flexible_accuracy: float
    replicas: tuple[ReplicaTiming, ...]
    versions: dict[str, str]
    device_name: str
    started_at: str
    straggler_gap: float = 0.0
    strict_maj_accuracy: float | None = None
    flexible_maj_accuracy: float | None = None
    failures: tuple[str, ...] = ()    # replica failures and what was re-run
    rerun_prompts: int = 0
    resumed_prompts: int = 0          # prompts taken from an earlier, interrupted attempt
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layout"] = self.config.layout
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        d["config"] = RunConfig.from_dict(d["config"])
        d["replicas"] = tuple(ReplicaTiming(**r) for r in d["replicas"])
        d["failures"] = tuple(d.get("failures", ()))
        return cls(**d)
