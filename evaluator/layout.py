"""Turn --mode/--gpus/--dp/--tp into a layout (dp replicas x tp devices) and map devices.

On CUDA hosts a device is a GPU (Ray hands each replica actor tp of them). On hosts without a
GPU a device is a fixed group of CPU cores, so single vs dp=N vs tp=N compares 1 device with N
devices exactly as on GPUs; each vLLM-CPU engine is pinned to its devices' cores.

    python -c "from evaluator.layout import resolve; print(resolve('hybrid', 4, 2, 2))"
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

MODES = ("single", "dp", "tp", "hybrid")


class LayoutError(ValueError):
    """An impossible layout; the message says why in one line."""


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int

    @property
    def devices(self) -> int:
        return self.dp * self.tp


def resolve(mode: str, gpus: int, dp: int | None = None, tp: int | None = None) -> Layout:
    """single = 1 device; dp = N replicas of 1; tp = 1 replica of N; hybrid = D x T = N."""
    if mode not in MODES:
        raise LayoutError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if gpus is None or gpus <= 0:
        raise LayoutError(f"--gpus must be at least 1 (got {gpus})")
    if mode == "single":
        if gpus != 1:
            raise LayoutError(f"--mode single uses exactly 1 device (got --gpus {gpus}); use dp, tp or hybrid")
        layout = Layout(1, 1)
    elif mode == "dp":
        layout = Layout(gpus, 1)
    elif mode == "tp":
        layout = Layout(1, gpus)
    else:
        if dp is None or tp is None:
            raise LayoutError("--mode hybrid needs both --dp and --tp")
        layout = Layout(dp, tp)
    if mode != "hybrid" and ((dp is not None and dp != layout.dp) or (tp is not None and tp != layout.tp)):
        raise LayoutError(f"--mode {mode} --gpus {gpus} means dp={layout.dp} tp={layout.tp}; "
                          f"--dp/--tp disagree (use --mode hybrid to choose both)")
    if layout.dp <= 0 or layout.tp <= 0:
        raise LayoutError(f"dp and tp must be at least 1 (got dp={layout.dp} tp={layout.tp})")
    if layout.devices != gpus:
        raise LayoutError(f"dp x tp = {layout.dp} x {layout.tp} = {layout.devices} but --gpus is {gpus}")
    return layout


def nvidia_smi(*args: str) -> str:
    """nvidia-smi's output, or "" where it is missing or fails (hosts without GPU)."""
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cuda_device_count() -> int:
    """GPUs this process may use, without initialising CUDA (nvidia-smi, then CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    out = nvidia_smi("-L")
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if visible:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def detect_device(requested: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu."""
    if requested != "auto":
        return requested
    return "cuda" if cuda_device_count() > 0 else "cpu"


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_device_count(cores_per_device: int) -> int:
    return len(usable_cpus()) // cores_per_device


def cpu_thread_binding(rank: int, tp: int, cores_per_device: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for replica `rank`: one '|'-separated core group per TP rank.
    Replica r owns devices r*tp .. r*tp+tp-1; device d owns cores d*c .. d*c+c-1."""
    cpus = usable_cpus()
    groups = []
    for k in range(tp):
        device = rank * tp + k
        cores = cpus[device * cores_per_device:(device + 1) * cores_per_device]
        groups.append(",".join(map(str, cores)))
    return "|".join(groups)


def gpu_memory_gib() -> float | None:
    """Total memory of the smallest visible GPU, or None when nvidia-smi cannot tell."""
    out = nvidia_smi("--query-gpu=memory.total", "--format=csv,noheader,nounits")
    values = [float(v) for v in out.split() if v.strip().replace(".", "", 1).isdigit()]
    return min(values) / 1024 if values else None


def parse_p2p_matrix(text: str) -> dict[tuple[int, int], bool]:
    """`nvidia-smi topo -p2p r` -> {(i, j): peer-to-peer read supported}."""
    result = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) < 2 or not cells[0].startswith("GPU") or not cells[0][3:].isdigit():
            continue
        if all(c.startswith("GPU") for c in cells):      # the header row
            continue
        i = int(cells[0][3:])
        for j, cell in enumerate(cells[1:]):
            if cell != "X":
                result[(i, j)] = cell == "OK"
    return result


def gpus_without_p2p(tp: int) -> list[tuple[int, int]]:
    """Pairs among the first tp visible GPUs that cannot read each other's memory directly
    (consumer cards such as the 4090 cannot): NCCL may then hang or crawl in tensor parallel."""
    if tp <= 1:
        return []
    matrix = parse_p2p_matrix(nvidia_smi("topo", "-p2p", "r"))
    return sorted((i, j) for (i, j), ok in matrix.items() if i < j < tp and not ok)


def weight_bytes(model: str) -> int | None:
    """Bytes of the weight files in a local model folder (None for hub ids or unknown layouts)."""
    from pathlib import Path
    path = Path(model)
    if not path.is_dir():
        return None
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None
