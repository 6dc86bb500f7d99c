"""The engine protocol every backend implements, and the registry that names them.

An engine has two methods: generate(prompts, params) returns one Completion per prompt, in the
same order, and close() releases every process and byte it holds. Nothing about GSM8K, scoring
or tables lives in an engine. `import vllm` / `import sglang` happen only inside their backend.

    python -c "from launchers.engines.base import ENGINES; print(sorted(ENGINES))"
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluator.records import Completion, SamplingConfig


@dataclass(frozen=True)
class EngineSpec:
    """What a replica needs to build its engine, in neutral names; each backend maps these to
    its own (tensor_parallel_size / tp_size, ...). engine_kwargs pass through untouched, in the
    engine's own names, and win over anything the backend would set."""
    model: str
    tp: int
    device: str                       # "cuda" or "cpu"
    seed: int = 0
    max_model_len: int | None = None
    native_dp: int = 1                # the engine's own data parallelism (SGLang --dp-backend native)
    cpu_memory_fraction: float | None = None   # per engine, CPU builds only
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    def generate(self, prompts: list[str], params: SamplingConfig,
                 seeds: list[int] | None = None) -> list[Completion]:
        """One Completion per prompt, same order. seeds (one per prompt, only when sampling)
        make each prompt's randomness independent of which replica or batch it lands in."""
    def close(self) -> None:
        """Shut the engine down: no process or memory of it may outlive this call."""


@dataclass(frozen=True)
class Backend:
    target: str                       # "module:Class"
    package: str                      # what must be importable
    install: str                      # the pip extra that provides it


ENGINES: dict[str, Backend] = {
    "vllm": Backend("launchers.engines.vllm:VLLMEngine", "vllm",
                    "pip install '.[cpu]' (CPU) or pip install '.[vllm]' (GPU)"),
    "sglang": Backend("launchers.engines.sglang:SGLangEngine", "sglang", "pip install '.[sglang]'"),
}


class EngineNotAvailable(RuntimeError):
    pass


def backend(name: str) -> Backend:
    if name not in ENGINES:
        raise EngineNotAvailable(f"unknown engine {name!r}; choose from {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def check_installed(name: str) -> None:
    """Raise with the install command when the engine's package is missing (no heavy import)."""
    b = backend(name)
    if importlib.util.find_spec(b.package) is None:
        raise EngineNotAvailable(f"engine {name!r} needs the package {b.package!r}, which is not "
                                 f"installed: {b.install}")


def build(name: str, spec: EngineSpec) -> Engine:
    module, cls = backend(name).target.split(":")
    return getattr(importlib.import_module(module), cls)(spec)
