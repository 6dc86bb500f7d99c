"""Turn --mode/--gpus/--dp/--tp into a layout (dp replicas x tp devices), list every layout a GPU
count allows (the one enumeration both `python -m evaluator.compare` and the SLURM sweep use), and
map devices to CPU cores on hosts without GPU.

On CUDA hosts a device is a GPU (Ray hands each replica actor tp of them). On hosts without a
GPU a device is a fixed group of CPU cores, so single vs dp=N vs tp=N compares 1 device with N
devices exactly as on GPUs; each vLLM-CPU engine is pinned to its devices' cores.

    python -c "from evaluator.layout import candidates; print([c.label for c in candidates(['vllm'], 4, 'offline')])"
"""
from __future__ import annotations

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


@dataclass(frozen=True)
class Candidate:
    """One layout to run: the evaluator flags that select it, and a label for tables."""
    engine: str
    mode: str
    gpus: int
    dp: int
    tp: int
    dp_backend: str = "ray"

    @property
    def label(self) -> str:
        return f"{self.engine} {self.dp}x{self.tp}" + (" native" if self.dp_backend == "native" else "")

    @property
    def name(self) -> str:
        """A folder name: vllm-dp2, sglang-dp2-native, vllm-2x2."""
        body = {"single": "single", "dp": f"dp{self.dp}", "tp": f"tp{self.tp}"}.get(self.mode, f"{self.dp}x{self.tp}")
        return f"{self.engine}-{body}" + ("-native" if self.dp_backend == "native" else "")

    def argv(self) -> list[str]:
        out = ["--engine", self.engine, "--mode", self.mode, "--gpus", str(self.gpus)]
        if self.mode == "hybrid":
            out += ["--dp", str(self.dp), "--tp", str(self.tp)]
        if self.dp_backend != "ray":
            out += ["--dp-backend", self.dp_backend]
        return out


def candidates(engines: list[str], gpus: int, workload: str, modes: tuple[str, ...] = MODES,
               native: bool = True) -> list[Candidate]:
    """Every layout of `gpus` devices, per engine: single (1 device), dp=N, tp=N, each hybrid
    D x T = N with both above 1, and dp=N inside the engine (native) where the engine has its own
    DP for this workload. Whether a layout can run on this model and host is the checks' job."""
    from launchers.engines.base import native_dp_workloads
    out: list[Candidate] = []
    for engine in engines:
        if "single" in modes:
            out.append(Candidate(engine, "single", 1, 1, 1))
        if gpus < 2:
            continue
        if "dp" in modes:
            out.append(Candidate(engine, "dp", gpus, gpus, 1))
            if native and workload in native_dp_workloads(engine):
                out.append(Candidate(engine, "dp", gpus, gpus, 1, "native"))
        if "tp" in modes:
            out.append(Candidate(engine, "tp", gpus, 1, gpus))
        if "hybrid" in modes:
            out += [Candidate(engine, "hybrid", gpus, d, gpus // d) for d in range(2, gpus)
                    if gpus % d == 0 and gpus // d > 1]
    return out


def cpu_thread_binding(rank: int, tp: int, cores_per_device: int, cpus: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for replica `rank`: one '|'-separated core group per TP rank.
    Replica r owns devices r*tp .. r*tp+tp-1; device d owns cores d*c .. d*c+c-1 of `cpus`
    (default: the cores this process may use)."""
    if cpus is None:
        from evaluator.hosts import usable_cpus
        cpus = usable_cpus()
    groups = []
    for k in range(tp):
        device = rank * tp + k
        cores = cpus[device * cores_per_device:(device + 1) * cores_per_device]
        groups.append(",".join(map(str, cores)))
    return "|".join(groups)
