"""Facts about the host, in one place that the run, the benchmark, the checks and the layout
share: GPUs (through NVML, nvidia-ml-py: count, name, memory, peer-to-peer), CPU cores and model,
package versions. Collected before any timed region, so no timing includes them.

    python -c "from evaluator.hosts import gpus; print(gpus())"
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GPU:
    index: int                        # as CUDA numbers it in this process (after CUDA_VISIBLE_DEVICES)
    name: str
    memory_gib: float


def _visible(total: int) -> list[int] | None:
    """Physical indices this process may use; None when CUDA_VISIBLE_DEVICES hides them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(total))
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if not ids or ids == ["-1"]:
        return None
    if all(i.isdigit() for i in ids):
        return [int(i) for i in ids if int(i) < total]
    return list(range(min(total, len(ids))))   # UUIDs: count them, the order is CUDA's


@lru_cache(maxsize=1)
def _nvml_handles() -> tuple:
    """NVML handles of the visible GPUs; () on hosts without a driver (or without nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
        total = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:     # no driver or no GPU: that is the answer, not a failure
        return ()
    return tuple(pynvml.nvmlDeviceGetHandleByIndex(i) for i in (_visible(total) or []))


def gpus() -> list[GPU]:
    import pynvml
    out = []
    for i, h in enumerate(_nvml_handles()):
        name = pynvml.nvmlDeviceGetName(h)
        out.append(GPU(i, name.decode() if isinstance(name, bytes) else name,
                       pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30))
    return out


def gpu_process_memory(pids: set[int]) -> int:
    """Bytes of device memory the given processes use on the visible GPUs (NVML's per-process
    accounting: compute and graphics contexts)."""
    import pynvml
    total = 0
    for h in _nvml_handles():
        for query in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                procs = query(h)
            except pynvml.NVMLError:
                continue
            total += sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)
    return total


def gpu_count() -> int:
    return len(_nvml_handles())


def gpus_without_p2p(tp: int) -> list[tuple[int, int]]:
    """Pairs among the first tp visible GPUs that cannot read each other's memory directly
    (consumer cards such as the 4090 cannot): NCCL may then hang or crawl in tensor parallel."""
    handles = _nvml_handles()[:tp]
    if len(handles) < 2:
        return []
    import pynvml
    # an int: some nvidia-ml-py releases define the index as a one-element tuple (a stray comma),
    # which ctypes cannot pass
    read = pynvml.NVML_P2P_CAPS_INDEX_READ
    read = int(read[0] if isinstance(read, tuple) else read)
    missing = []
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            status = pynvml.nvmlDeviceGetP2PStatus(handles[i], handles[j], read)
            if status != pynvml.NVML_P2P_STATUS_OK:
                missing.append((i, j))
    return missing


def detect_device(requested: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu."""
    if requested != "auto":
        return requested
    return "cuda" if gpu_count() > 0 else "cpu"


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_device_count(cores_per_device: int) -> int:
    return len(usable_cpus()) // cores_per_device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor() or "cpu"


def device_name(device: str, cores_per_device: int = 1) -> str:
    if device == "cuda":
        found = gpus()
        return found[0].name if found else "cuda"
    return f"cpu ({cores_per_device} core/device, {cpu_model()})"


def device_count(device: str) -> int:
    """GPUs visible, or CPU cores usable, on this host."""
    return gpu_count() if device == "cuda" else len(usable_cpus())


def versions(engine: str) -> dict[str, str]:
    """python, torch, ray, transformers and the engine's own distributions, as installed."""
    from launchers.engines.base import backend
    out = {"python": platform.python_version()}
    for name in dict.fromkeys(("torch", "ray", "transformers", *backend(engine).distributions)):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class HostFacts:
    device_name: str
    versions: dict[str, str]


def host_facts(engine: str, device: str, cores_per_device: int = 1) -> HostFacts:
    return HostFacts(device_name(device, cores_per_device), versions(engine))


def cpu_thread_binding(rank: int, tp: int, cores_per_device: int, cpus: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for replica `rank`: one '|'-separated core group per TP rank.
    Replica r owns devices r*tp .. r*tp+tp-1; device d owns cores d*c .. d*c+c-1 of `cpus`
    (default: the cores this process may use)."""
    if cpus is None:
        cpus = usable_cpus()
    groups = []
    for k in range(tp):
        device = rank * tp + k
        cores = cpus[device * cores_per_device:(device + 1) * cores_per_device]
        groups.append(",".join(map(str, cores)))
    return "|".join(groups)
