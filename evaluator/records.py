"""Frozen records passed between the pipeline steps and written to results/.

One dataclass per kind of record: what a run was asked to do (RunConfig, with SamplingConfig and,
for serving runs, ServeConfig), one prompt's work item (Prompt), one engine answer (Completion),
one scored sample (Sample), one replica's timing (ReplicaTiming), one attempt of a run (Attempt)
and the run's summary (RunSummary). Units are in the names.

Files carry schema_version. Reading is strict: an unknown field or a newer schema is an error
(RecordError), never silently dropped; schema 1 (before attempts, intervals and serving) is
read by filling what it did not record, schema 2 (before traffic, memory and capacity) by the
fields' defaults, schema 3 (the layout as mode, gpus, dp, tp and dp_backend fields of the run
config) by building its Layout record from them.

    python -c "from evaluator.records import SCHEMA_VERSION; print(SCHEMA_VERSION)"
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from evaluator.layout import Layout, LayoutError, resolve

SCHEMA_VERSION = 4


class RecordError(ValueError):
    """A results file this version cannot read as what it claims to be."""


def _strict(cls, d: dict[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise RecordError(f"{what}: unknown field(s) {', '.join(unknown)} (written by a newer version?)")
    return d


def _check_version(d: dict[str, Any], what: str) -> int:
    version = d.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RecordError(f"{what}: schema_version {version!r}, this version reads up to {SCHEMA_VERSION}")
    return version


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
class ServeConfig:
    """How a serving run loads its servers: one level per concurrency, request rate or replay
    speed, or (capacity) the rates a search for the highest one within the SLOs picks."""
    level_kind: str = "concurrency"            # "concurrency" (closed loop), "rate" (Poisson arrivals), "replay"
    levels: tuple[float, ...] = (1, 4, 16, 64)  # requests in flight, requests/s (inf = all at once), replay speeds
    level_prompts: str = "8x"                   # "all", "N" or "Nx" (N x the level's value) fresh requests
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    request_timeout_s: float = 600.0
    traffic: str = "gsm8k"                      # gsm8k | FILE.jsonl | FILE.json (ShareGPT) | synthetic:...
    capacity: bool = False                      # search the highest rate within the SLOs (levels = the probes)
    capacity_start: float = 1.0                 # the search's first rate, requests/s
    capacity_levels: int = 8                    # at most this many probes
    capacity_tolerance: float = 0.1             # stop once the bracket's top / bottom <= 1 + this
    slo_percentile: float = 90.0                # capacity: this percentile of TTFT and TPOT must meet the SLOs
    max_concurrency: int | None = None          # rate/replay levels: at most this many in flight
    health_interval_s: float = 5.0              # how often the client asks busy servers' /health (hung servers)
    warmup_requests: int = 8                    # untimed requests per server before the first level
    level_min_s: float = 10.0                   # a level goes on with fresh requests until it lasted this long
    reuse_requests: bool = False                # levels may re-send requests once the fresh ones run out (marked)
    capacity_repeats: int = 2                   # an unsure probe is run again (fresh requests) up to this often
    slo_confidence: float = 0.9                 # a probe holds when its percentile's interval at this level is within the SLO

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServeConfig":
        d = dict(_strict(cls, d, "serve config"))
        d["levels"] = tuple(float(v) for v in d.get("levels", ()))
        if "warmup_requests" not in d:
            # written before fresh requests (schema 3): no warm-up, no minimum, the old default
            d.update(warmup_requests=0, level_min_s=0.0, capacity_repeats=0, reuse_requests=True)
            d.setdefault("level_prompts", "all")
        return cls(**d)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; written to config.json before any work starts. The layout
    is one record with named axes (evaluator.layout.Layout); dp, tp, mode, gpus and dp_backend
    are read through it."""
    engine: str
    layout: Layout
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
    on_replica_failure: str = "rerun"
    replica_timeout_s: float | None = None
    ray_address: str | None = None
    engine_logs: bool = False         # stream the engines' own logs (Ray workers) to stderr
    workload: str = "offline"         # "offline" (one batch) or "serve" (servers under load levels)
    serve: ServeConfig | None = None  # serving runs only
    deterministic: bool = False       # the engine's batch-invariant / deterministic mode
    tokenizer: str | None = None      # the folder with config and tokenizer when model is a checkpoint file (GGUF)
    base_model: str | None = None     # the model this one is a quantised checkpoint of (answers paired with it)

    # the layout's axes, read as before (every driver and table reads these)
    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def dp_backend(self) -> str:
        return self.layout.dp_backend

    @property
    def mode(self) -> str:
        return self.layout.mode

    @property
    def gpus(self) -> int:
        """Devices the layout holds."""
        return self.layout.devices

    @property
    def model_folder(self) -> str:
        """Where the model's config.json and tokenizer are (the model itself, or --tokenizer)."""
        return self.tokenizer or self.model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        old = {k: d.pop(k) for k in ("mode", "gpus", "dp", "tp", "dp_backend") if k in d}
        d = dict(_strict(cls, d, "run config"))
        try:
            if "layout" in d:
                if old:
                    raise RecordError(f"run config: both a layout and {', '.join(old)}")
                d["layout"] = Layout.from_dict(d["layout"])
            else:       # schema 3 and older: the layout as flat fields
                d["layout"] = resolve(old.get("mode"), old.get("gpus"), old.get("dp"), old.get("tp"),
                                      old.get("dp_backend", "ray"))
        except LayoutError as e:
            raise RecordError(f"run config: {e}") from None
        d["sampling"] = SamplingConfig(**_strict(SamplingConfig, d["sampling"], "sampling config"))
        if d.get("serve") is not None:
            d["serve"] = ServeConfig.from_dict(d["serve"])
        return cls(**d)


@dataclass(frozen=True)
class Prompt:
    """One work item: the global index survives sharding, collection and resume.

    token_ids are what every offline engine is given: the rendered chat template tokenised once,
    without adding special tokens, so a template that writes its own BOS (Llama 3, Gemma, Mistral)
    gives one BOS, as the servers (which render the messages themselves) and the reference engine
    see it. They stay in memory (all 1319 GSM8K prompts: ~10 MiB as tuples, ~0.9 KB each pickled
    to a replica, about what the text was) and are not written to samples.jsonl: they are the same
    on every run of a model and data file; what each engine reports it saw is (Sample.prompt_tokens)."""
    index: int
    text: str                         # the chat-template-rendered prompt, for people (engines get token_ids)
    gold: str
    prompt_tokens: int = 0            # len(token_ids): balanced sharding, length checks, the servers' usage check
    messages: tuple[dict, ...] = ()   # the chat messages (serving sends these; the server renders them)
    token_ids: tuple[int, ...] = ()   # the engine's input (see above)


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
        # flat fields only: a shallow dict (asdict deep-copies every field, a third of the time a
        # 1319-answer run spent storing its samples)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["responses"] = list(self.responses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        _check_version(d, "sample")
        d = dict(_strict(cls, d, "sample"))
        d["responses"] = tuple(d.get("responses", ()))
        d["schema_version"] = SCHEMA_VERSION
        return cls(**d)


@dataclass(frozen=True)
class ReplicaTiming:
    """What one replica measured about itself (seconds from its own clock)."""
    rank: int
    devices: str                      # CUDA_VISIBLE_DEVICES or the pinned CPU cores
    startup_s: float                  # engine construction (serving: process start until healthy)
    generate_s: float                 # first generate call start to last generate call end
    prompts: int
    prompt_tokens: int
    completion_tokens: int
    idle_after_finish_s: float = 0.0  # waited for the slowest replica after its last chunk
    chunks: int = 0
    failed: str | None = None         # why it died, when it did
    compile: str = "unknown"          # cold (compiled at start-up) | warm (cache reused) | none | unknown
    kv_cache_tokens: int | None = None       # as the engine reported it at start-up (all its devices)
    max_concurrency: float | None = None     # sequences of the full context the KV cache holds (engine's figure)
    weights_gib: float | None = None         # per device, as the engine reported loading them
    peak_memory_gib: float | None = None     # the replica's processes at their peak: device memory (NVML) on
    #                                          GPUs, resident memory on CPU hosts
    settings: dict | None = None             # what its engine ran with, in neutral names (EngineSettings.to_dict:
    #                                          kwargs given, over the engine's defaults, over its log); None: not recorded


@dataclass(frozen=True)
class Attempt:
    """One start of a run (the first, or a --resume): what it generated and in how long."""
    started_at: str
    prompts: int                      # prompts this attempt generated (not those it found done)
    startup_s: float
    generate_s: float
    completion_tokens: int
    wall_s: float                     # a killed attempt's: from its start to its last sign of life
    finished: bool                    # False: killed or failed; its finished chunks were kept


@dataclass(frozen=True)
class RunSummary:
    """summary.json: its presence means the run finished.

    Speed figures (startup_s, generate_s, output_tokens_per_s, replicas) are the last attempt's
    and cover timed_prompts prompts; accuracy covers all `prompts`. A resumed run
    (resumed_prompts > 0) is marked in every table and left out of speedups and verdicts."""
    run_id: str
    config: RunConfig
    prompts: int
    wall_s: float
    startup_s: float                  # slowest replica
    generate_s: float                 # slowest replica
    output_tokens_per_s: float
    prompt_tokens: int
    completion_tokens: int
    strict_accuracy: float | None     # None: not measured (a serving run whose traffic is not GSM8K)
    flexible_accuracy: float | None
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
    timed_prompts: int = 0            # prompts the speed figures cover (the last attempt's)
    timed_completion_tokens: int = 0
    strict_ci: tuple[float, float] = (0.0, 1.0)     # 95% Wilson interval of strict_accuracy
    flexible_ci: tuple[float, float] = (0.0, 1.0)
    attempts: tuple[Attempt, ...] = ()
    engine_env: dict[str, str] = field(default_factory=dict)   # variables the backend set
    levels: tuple[dict, ...] = ()     # serving runs: one LevelStats dict per load level
    traffic: dict = field(default_factory=dict)      # serving runs: what the load was (name and shape)
    capacity: dict | None = None      # serving runs with --capacity: the highest rate within the SLOs
    memory: dict = field(default_factory=dict)       # predicted before the run (evaluator.memory)
    scored_from: dict | None = None   # serving runs: the levels whose answers are the run's accuracy, and why
    schema_version: int = SCHEMA_VERSION

    @property
    def resumed(self) -> bool:
        return self.resumed_prompts > 0

    @property
    def settings(self) -> dict | None:
        """What the engine ran with (ReplicaTiming.settings of the first replica that recorded it)."""
        return next((r.settings for r in self.replicas if r.settings), None)

    @property
    def compile(self) -> str:
        """cold if any replica compiled at start-up, else warm / none / unknown."""
        states = {r.compile for r in self.replicas if not r.failed} or {"unknown"}
        for state in ("cold", "warm", "none"):
            if state in states:
                return state
        return "unknown"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layout"] = self.config.layout.label       # derived, for readers of the file ("2x1 native")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        version = _check_version(d, "summary")
        d = {k: v for k, v in d.items() if k != "layout"}     # derived, written for readers
        d = dict(_strict(cls, d, "summary"))
        d["config"] = RunConfig.from_dict(d["config"])
        d["replicas"] = tuple(ReplicaTiming(**_strict(ReplicaTiming, r, "replica timing")) for r in d["replicas"])
        d["failures"] = tuple(d.get("failures", ()))
        d["attempts"] = tuple(Attempt(**_strict(Attempt, a, "attempt")) for a in d.get("attempts", ()))
        d["levels"] = tuple(d.get("levels", ()))
        for key in ("strict_ci", "flexible_ci"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        if version == 1:
            # schema 1 timed every prompt in one attempt, except a resumed run, whose figures
            # covered only the last attempt's window while dividing all tokens by it
            from evaluator.intervals import wilson_interval
            n = d["prompts"]
            d["timed_prompts"] = n - d.get("resumed_prompts", 0)
            d["timed_completion_tokens"] = d["completion_tokens"] if not d.get("resumed_prompts") else 0
            d["strict_ci"] = wilson_interval(round(d["strict_accuracy"] * n), n)
            d["flexible_ci"] = wilson_interval(round(d["flexible_accuracy"] * n), n)
        d["schema_version"] = SCHEMA_VERSION
        return cls(**d)
