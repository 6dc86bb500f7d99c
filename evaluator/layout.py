"""The layout record: how one run spreads a model over devices, one named field per axis (data
parallel replicas, tensor parallel devices per replica, pipeline stages, expert parallel size,
who does the data parallelism and, for a router, its policy). Everything that names a layout (the
flags, the labels in tables, the folder names, the sweep file, config.json) goes through it, so a
new axis is a new field here, not a new format in ten files. The list of every layout a device
count allows is evaluator.plan.candidates (it asks the engines what they can do); the mapping of
devices to CPU cores on hosts without GPU is evaluator.hosts.cpu_thread_binding.

On CUDA hosts a device is a GPU (Ray hands each replica actor tp of them). On hosts without a
GPU a device is a fixed group of CPU cores, so single vs dp=N vs tp=N compares 1 device with N
devices exactly as on GPUs; each vLLM-CPU engine is pinned to its devices' cores.

    python -c "from evaluator.layout import Layout; print(Layout(2, 2).label)"
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("single", "dp", "tp", "hybrid")
DP_BACKENDS = ("ray", "native", "router")
# the sweep file's and the label's names of the axes: the evaluator's flags without their dashes
SPEC_KEYS = {"dp": "dp", "tp": "tp", "pp": "pp", "ep": "ep", "dp-backend": "dp_backend",
             "router-policy": "router_policy"}


class LayoutError(ValueError):
    """An impossible layout; the message says why in one line."""


@dataclass(frozen=True)
class Layout:
    """One layout, by named axes. dp replicas of tp x pp devices each; ep is the expert-parallel
    size, which spans the replicas' devices rather than adding any. dp_backend says who runs the
    data parallelism: ray (one engine per Ray actor, requests routed by our load client), native
    (one engine using its own DP), router (one server per replica behind the engine's own router
    from PyPI, which routes every request by router_policy, in the router's own name)."""
    dp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp_backend: str = "ray"
    router_policy: str | None = None

    def __post_init__(self):
        for axis in ("dp", "tp", "pp", "ep"):
            value = getattr(self, axis)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LayoutError(f"{axis} must be a whole number of at least 1 (got {value!r})")
        if self.dp_backend not in DP_BACKENDS:
            raise LayoutError(f"unknown data-parallel backend {self.dp_backend!r}; choose from "
                              f"{', '.join(DP_BACKENDS)}")
        if self.dp_backend == "router" and not self.router_policy:
            raise LayoutError("a router layout needs its routing policy (--router-policy)")
        if self.dp_backend != "router" and self.router_policy is not None:
            raise LayoutError(f"--router-policy is for --dp-backend router (this layout's DP is {self.dp_backend})")

    @property
    def devices(self) -> int:
        """Devices the whole layout holds."""
        return self.dp * self.tp * self.pp

    @property
    def native(self) -> bool:
        return self.dp_backend == "native"

    @property
    def routed(self) -> bool:
        return self.dp_backend == "router"

    @property
    def replicas(self) -> int:
        """Engines (offline) or servers (serving) the run starts: one holds every rank of native DP."""
        return 1 if self.native else self.dp

    @property
    def engine_dp(self) -> int:
        """The data parallelism inside one engine (its own DP, native only)."""
        return self.dp if self.native else 1

    @property
    def engine_devices(self) -> int:
        """Devices one engine (one replica) holds."""
        return self.engine_dp * self.tp * self.pp

    @property
    def mode(self) -> str:
        """The --mode this layout is: single, dp (tp=1), tp (dp=1) or hybrid (both above 1)."""
        if self.dp == 1 and self.tp == 1:
            return "single"
        if self.tp == 1:
            return "dp"
        if self.dp == 1:
            return "tp"
        return "hybrid"

    @property
    def label(self) -> str:
        """'1x1', '2x1', '1x2', '2x1 native', '2x1 router round_robin', '1x2 pp=2' (DP x TP first:
        the axes every layout has; the others only where they are not 1)."""
        out = f"{self.dp}x{self.tp}"
        out += "".join(f" {a}={getattr(self, a)}" for a in ("pp", "ep") if getattr(self, a) != 1)
        if self.native:
            out += " native"
        if self.routed:
            out += f" router {self.router_policy}"
        return out

    def __str__(self) -> str:
        return self.label

    @property
    def name(self) -> str:
        """A folder name: single, dp2, tp2, 2x2, dp2-native, dp2-router-round_robin, tp2-pp2."""
        body = {"single": "single", "dp": f"dp{self.dp}", "tp": f"tp{self.tp}"}.get(self.mode, f"{self.dp}x{self.tp}")
        body += "".join(f"-{a}{getattr(self, a)}" for a in ("pp", "ep") if getattr(self, a) != 1)
        if self.native:
            body += "-native"
        if self.routed:
            body += f"-router-{self.router_policy}"
        return body

    def spec(self) -> str:
        """The sweep file's form: 'dp=2 tp=1', 'dp=2 tp=1 dp-backend=router router-policy=round_robin'
        (dp and tp always; every other axis where it is not its default)."""
        parts = [f"dp={self.dp}", f"tp={self.tp}"]
        for key, attr in SPEC_KEYS.items():
            if key in ("dp", "tp"):
                continue
            value = getattr(self, attr)
            if value != _DEFAULTS[attr]:
                parts.append(f"{key}={value}")
        return " ".join(parts)

    def argv(self) -> list[str]:
        """The evaluator flags that select this layout (--mode/--gpus as before; --dp/--tp for
        hybrid; every axis by name where pp or ep is not 1; the backend and policy where not the
        default)."""
        if self.pp != 1 or self.ep != 1:
            out = ["--dp", str(self.dp), "--tp", str(self.tp), "--pp", str(self.pp), "--ep", str(self.ep)]
        else:
            out = ["--mode", self.mode, "--gpus", str(self.devices)]
            if self.mode == "hybrid":
                out += ["--dp", str(self.dp), "--tp", str(self.tp)]
        if self.dp_backend != "ray":
            out += ["--dp-backend", self.dp_backend]
        if self.router_policy:
            out += ["--router-policy", self.router_policy]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise LayoutError(f"layout: unknown axis {', '.join(unknown)} (written by a newer version?)")
        return cls(**d)


_DEFAULTS = {f.name: f.default for f in fields(Layout)}


def parse_spec(tokens: list[str]) -> Layout:
    """['dp=2', 'tp=1', 'dp-backend=router', 'router-policy=round_robin'] -> Layout; an axis left
    out takes its default (1, ray). LayoutError names the bad token."""
    values: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in SPEC_KEYS:
            raise LayoutError(f"{token!r} is not an axis (give {', '.join(k + '=...' for k in SPEC_KEYS)})")
        attr = SPEC_KEYS[key]
        if attr in values:
            raise LayoutError(f"{key} is given twice")
        if attr in ("dp", "tp", "pp", "ep"):
            try:
                values[attr] = int(value)
            except ValueError:
                raise LayoutError(f"{key} must be a whole number (got {value!r})") from None
        else:
            values[attr] = value
    return Layout(**values)


def resolve(mode: str | None, gpus: int | None, dp: int | None = None, tp: int | None = None,
            dp_backend: str = "ray", router_policy: str | None = None, pp: int = 1, ep: int = 1) -> Layout:
    """The layout the flags mean. single = 1 device; dp = N replicas of 1; tp = 1 replica of N;
    hybrid = D x T = N. mode None: from the axes alone (--dp/--tp/--pp/--ep, each 1 when not
    given), --gpus then optional. dp_backend and router_policy are carried as given (Layout
    checks them)."""
    if mode is not None and mode not in MODES:
        raise LayoutError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if gpus is not None and gpus <= 0:
        raise LayoutError(f"--gpus must be at least 1 (got {gpus})")
    if mode is not None and (pp != 1 or ep != 1):
        raise LayoutError("--pp and --ep name the layout by its axes: give --dp/--tp/--pp/--ep without --mode")
    if mode is None:
        if dp is None and tp is None and pp == 1 and ep == 1:
            mode = "single"
        else:
            layout = Layout(dp or 1, tp or 1, pp, ep, dp_backend=dp_backend, router_policy=router_policy)
            if gpus is not None and layout.devices != gpus:
                raise LayoutError(f"dp x tp x pp = {layout.dp} x {layout.tp} x {layout.pp} = {layout.devices} "
                                  f"but --gpus is {gpus}")
            return layout
    if gpus is None:
        gpus = 1
    if mode == "single":
        if gpus != 1:
            raise LayoutError(f"--mode single uses exactly 1 device (got --gpus {gpus}); use dp, tp or hybrid")
        axes = (1, 1)
    elif mode == "dp":
        axes = (gpus, 1)
    elif mode == "tp":
        axes = (1, gpus)
    else:
        if dp is None or tp is None:
            raise LayoutError("--mode hybrid needs both --dp and --tp")
        axes = (dp, tp)
    if mode != "hybrid" and ((dp is not None and dp != axes[0]) or (tp is not None and tp != axes[1])):
        raise LayoutError(f"--mode {mode} --gpus {gpus} means dp={axes[0]} tp={axes[1]}; "
                          f"--dp/--tp disagree (use --mode hybrid to choose both)")
    if axes[0] <= 0 or axes[1] <= 0:
        raise LayoutError(f"dp and tp must be at least 1 (got dp={axes[0]} tp={axes[1]})")
    if axes[0] * axes[1] != gpus:
        raise LayoutError(f"dp x tp = {axes[0]} x {axes[1]} = {axes[0] * axes[1]} but --gpus is {gpus}")
    return Layout(*axes, dp_backend=dp_backend, router_policy=router_policy)


@dataclass(frozen=True)
class Candidate:
    """One layout of one engine to run: the evaluator flags that select it, a label for tables
    and a folder name."""
    engine: str
    layout: Layout

    @property
    def label(self) -> str:
        return f"{self.engine} {self.layout.label}"

    @property
    def name(self) -> str:
        """A folder name: vllm-dp2, sglang-dp2-native, vllm-2x2, vllm-dp2-router-round_robin."""
        return f"{self.engine}-{self.layout.name}"

    def argv(self) -> list[str]:
        return ["--engine", self.engine, *self.layout.argv()]
