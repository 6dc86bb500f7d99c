"""The layout record with named axes (evaluator.layout.Layout): its one label, folder name, sweep
form and flags; what a backend cannot do, refused axis by axis with the reason; and its round trip
through every place a layout is written down: config.json (new, and every older run kept as
evidence), the comparison's saved plan, the sweep file, and --resume."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from evaluator import compare
from evaluator.cli import build_parser, config_from_args, resume_run
from evaluator.errors import UsageError
from evaluator.layout import Layout, LayoutError, parse_spec, resolve
from evaluator.plan import candidates
from evaluator.records import RecordError, RunConfig, RunSummary, SamplingConfig
from evaluator.store import RunDir
from launchers.engines.base import layout_problem, router_of
from launchers.sweepfile import format_sweep, generate, parse_sweep

ROOT = Path(__file__).resolve().parents[1]
ROUTED = Layout(2, 1, dp_backend="router", router_policy="round_robin")


@pytest.mark.parametrize("layout,label,name,spec", [
    (Layout(), "1x1", "single", "dp=1 tp=1"),
    (Layout(2, 1), "2x1", "dp2", "dp=2 tp=1"),
    (Layout(1, 2), "1x2", "tp2", "dp=1 tp=2"),
    (Layout(2, 2), "2x2", "2x2", "dp=2 tp=2"),
    (Layout(2, 1, dp_backend="native"), "2x1 native", "dp2-native", "dp=2 tp=1 dp-backend=native"),
    (ROUTED, "2x1 router round_robin", "dp2-router-round_robin", "dp=2 tp=1 dp-backend=router router-policy=round_robin"),
    (Layout(1, 2, pp=2), "1x2 pp=2", "tp2-pp2", "dp=1 tp=2 pp=2"),
    (Layout(2, 1, ep=2), "2x1 ep=2", "dp2-ep2", "dp=2 tp=1 ep=2"),
])
def test_one_label_one_name_one_spec_per_layout(layout, label, name, spec):
    """Every place that names a layout reads it from the record: the tables' label (the old "DxT"
    labels unchanged), the folder name (the comparison's old names unchanged), the sweep form; the
    sweep form and the flags both give the same record back."""
    assert (layout.label, layout.name, layout.spec(), str(layout)) == (label, name, spec, label)
    assert parse_spec(spec.split()) == layout
    args = build_parser().parse_args(layout.argv())
    assert resolve(args.mode, args.gpus, args.dp, args.tp, args.dp_backend, args.router_policy, args.pp,
                   args.ep) == layout
    assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_the_axes_and_what_they_hold():
    assert (ROUTED.devices, ROUTED.replicas, ROUTED.engine_dp, ROUTED.engine_devices) == (2, 2, 1, 1)
    native = Layout(4, 1, dp_backend="native")
    assert (native.devices, native.replicas, native.engine_dp, native.engine_devices) == (4, 1, 4, 4)
    assert (Layout(2, 2, pp=2).devices, Layout(2, 2, ep=4).devices) == (8, 4)    # ep spans the dp x tp devices
    assert [Layout(*a).mode for a in ((1, 1), (2, 1), (1, 2), (2, 2))] == ["single", "dp", "tp", "hybrid"]


@pytest.mark.parametrize("kwargs,message", [
    ({"dp": 0}, "dp must be a whole number of at least 1"),
    ({"tp": 1.5}, "tp must be a whole number"),
    ({"dp_backend": "mpi"}, "unknown data-parallel backend 'mpi'"),
    ({"dp": 2, "dp_backend": "router"}, "needs its routing policy"),
    ({"dp": 2, "router_policy": "round_robin"}, "--router-policy is for --dp-backend router"),
])
def test_an_impossible_layout_is_refused_when_made(kwargs, message):
    with pytest.raises(LayoutError, match=message):
        Layout(**kwargs)


def test_the_axes_alone_select_a_layout():
    """--dp/--tp without --mode name the layout (--gpus then optional, and checked)."""
    assert resolve(None, None, 2, 2) == Layout(2, 2)
    assert resolve(None, None, 2, None, "router", "power_of_two") == Layout(2, 1, dp_backend="router",
                                                                           router_policy="power_of_two")
    assert resolve(None, None) == Layout()
    with pytest.raises(LayoutError, match="dp x tp x pp = 2 x 2 x 1 = 4 but --gpus is 2"):
        resolve(None, 2, 2, 2)
    with pytest.raises(LayoutError, match="give --dp/--tp/--pp/--ep without --mode"):
        resolve("dp", 2, pp=2)


def test_each_backend_maps_the_axes_it_has():
    """A layout a backend cannot run is refused with the reason, axis by axis (the comparison
    lists it as skipped with that line)."""
    assert layout_problem("vllm", Layout(1, 2), "offline") is None
    assert layout_problem("vllm", Layout(1, 2, pp=2), "offline") == ("vllm: pipeline parallelism (pp=2) is not mapped "
                                                                    "to its engine by this tool yet")
    assert "expert parallelism (ep=2)" in layout_problem("sglang", Layout(2, 1, ep=2), "serve")
    assert layout_problem("hf", Layout(1, 2), "offline").startswith("hf has no tensor parallelism")
    assert "no data parallelism of its own for offline runs" in layout_problem("vllm", Layout(2, 1, dp_backend="native"),
                                                                               "offline")
    assert layout_problem("hf", ROUTED, "serve") == ("hf has no router of its own (--dp-backend router); use "
                                                     "--dp-backend ray")
    assert layout_problem("vllm", ROUTED, "offline") == ("a router sends requests to servers: --dp-backend router is "
                                                         "for --workload serve")
    assert layout_problem("vllm", Layout(2, 1, dp_backend="router", router_policy="fastest"), "serve") == (
        "--router-policy 'fastest': vllm-router routes by round_robin, power_of_two, cache_aware, random")
    assert (router_of("vllm").name, router_of("sglang").name, router_of("hf")) == ("vllm-router", "sglang-router", None)


def test_a_router_that_is_not_installed_is_the_reason(monkeypatch):
    """Where the engine's router package is missing, its router layouts say so and how to install it
    (here: hide vllm-router from the import system, as a machine without it would)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm_router" else real(name, *a))
    assert layout_problem("vllm", ROUTED, "serve") == ("--dp-backend router needs vllm-router, which is not installed: "
                                                       "pip install vllm-router")


def test_candidates_list_router_layouts_beside_ray_and_native_dp():
    labels = [c.label for c in candidates(["vllm", "sglang"], 2, "serve", ("dp",))]
    assert labels == ["vllm 2x1", "vllm 2x1 native", "vllm 2x1 router cache_aware",
                      "sglang 2x1", "sglang 2x1 native", "sglang 2x1 router cache_aware"]
    assert [c.label for c in candidates(["vllm"], 2, "offline", ("dp",))] == ["vllm 2x1"]     # no offline router
    chosen = candidates(["vllm"], 2, "serve", ("dp",), native=False,
                        router_policies={"vllm": ("round_robin", "power_of_two")})
    assert [c.name for c in chosen] == ["vllm-dp2", "vllm-dp2-router-round_robin", "vllm-dp2-router-power_of_two"]
    assert [c.label for c in candidates(["vllm"], 2, "serve", ("dp",), router_policies={})] == ["vllm 2x1",
                                                                                                "vllm 2x1 native"]


# --- round trips ---------------------------------------------------------------------------------
def _config(layout: Layout, **kw) -> RunConfig:
    return RunConfig(engine="vllm", layout=layout, model="/m", data="/d.parquet", device="cpu",
                     sampling=SamplingConfig(max_tokens=12), **kw)


@pytest.mark.parametrize("layout", [Layout(), Layout(2, 2), Layout(2, 1, dp_backend="native"), ROUTED,
                                    Layout(1, 2, pp=2, ep=2)])
def test_the_layout_round_trips_through_config_json(tmp_path, layout):
    cfg = _config(layout, workload="serve")
    RunDir(tmp_path).write_config(cfg, {"run_id": "r"})
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert saved["layout"] == layout.to_dict() and not {"mode", "gpus", "dp", "tp", "dp_backend"} & set(saved)
    again = RunDir(tmp_path).read_config()
    assert again == cfg and again.layout == layout
    assert (again.dp, again.tp, again.gpus, again.mode, again.dp_backend) == (layout.dp, layout.tp, layout.devices,
                                                                                layout.mode, layout.dp_backend)


def test_a_config_json_from_before_named_axes_still_loads():
    """Schema 3 and older kept the layout as mode, gpus, dp, tp and dp_backend fields."""
    d = _config(Layout()).to_dict()
    del d["layout"]
    d.update(mode="dp", gpus=2, dp=2, tp=1, dp_backend="native")
    assert RunConfig.from_dict(d).layout == Layout(2, 1, dp_backend="native")
    d.update(mode="hybrid", gpus=4, dp=2, tp=2, dp_backend="ray")
    assert RunConfig.from_dict(d).layout == Layout(2, 2)
    d.update(mode="dp", gpus=3, dp=2, tp=1)
    with pytest.raises(RecordError, match="--mode dp --gpus 3 means dp=3 tp=1"):
        RunConfig.from_dict(d)
    bad = {**_config(ROUTED).to_dict(), "layout": {**ROUTED.to_dict(), "sp": 2}}
    with pytest.raises(RecordError, match="unknown axis sp"):
        RunConfig.from_dict(bad)


def test_every_run_kept_as_evidence_still_loads():
    """Every summary.json and config.json under results/evidence (schemas 1 to 3) reads, its layout
    the one its old fields named, and is written back in the new shape and read again unchanged."""
    summaries = configs = 0
    for path in sorted((ROOT / "results" / "evidence").rglob("*.json")):
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            continue
        if "config" in d and "run_id" in d and "replicas" in d:          # a summary
            s = RunSummary.from_dict(d)
            old = d["config"]
            summaries += 1
        elif path.name == "config.json" and "config" in d:
            s = None
            old = d["config"]
            cfg = RunConfig.from_dict(old)
            configs += 1
        else:
            continue
        cfg = s.config if s else cfg
        if "layout" in old:         # written in the new shape (schema 4): read back as written
            assert cfg.layout == Layout(**old["layout"]) and RunConfig.from_dict(cfg.to_dict()) == cfg, path
            continue
        assert (cfg.dp, cfg.tp, cfg.layout.dp_backend) == (old["dp"], old["tp"], old.get("dp_backend", "ray")), path
        assert cfg.layout.devices == old["gpus"] and cfg.mode == old["mode"], path
        if s is not None:
            assert d.get("layout", cfg.layout.label) == f"{old['dp']}x{old['tp']}", path
            assert RunSummary.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert summaries >= 20 and configs >= 10
    plans = 0               # a comparison's saved plan (version 2) keeps every layout's config too
    for path in sorted((ROOT / "results" / "evidence").rglob("compare.json")):
        d = json.loads(path.read_text())
        if d.get("version", 1) >= 2:
            planned = [compare.Planned.from_dict(p) for p in d["layouts"]]
            assert all(p.config is None or p.label.startswith(f"{p.config.engine} {p.config.layout.label}")
                       for p in planned), path
            plans += 1
    assert plans >= 2


def test_the_layout_round_trips_through_the_sweep_file():
    lines = generate(["vllm", "sglang"], ["single", "dp", "tp", "hybrid"], [2, 4], ["--limit", "8"],
                     workload="serve", router_policies={"vllm": ("round_robin",), "sglang": ("power_of_two",)})
    assert parse_sweep(format_sweep(lines, "round trip")) == lines
    for line in lines:      # what each task runs selects the very layout its line names
        args = build_parser().parse_args(line.argv())
        assert resolve(args.mode, args.gpus, args.dp, args.tp, args.dp_backend, args.router_policy, args.pp,
                       args.ep) == line.layout
    assert sum(l.layout.routed for l in lines) == 4


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_layout_round_trips_through_a_run_folder_and_resume(tiny_model, gsm8k_parquet, tmp_path):
    """The flags -> the checked RunConfig -> config.json -> --resume gives the same layout back
    (checked again against this host), and the comparison's saved plan keeps it as well."""
    argv = ["--engine", "vllm", "--device", "cpu", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
            "--workload", "serve", "--dp", "2", "--dp-backend", "router", "--router-policy", "power_of_two"]
    cfg = config_from_args(_args(*argv))
    assert cfg.layout == Layout(2, 1, dp_backend="router", router_policy="power_of_two")
    assert config_from_args(_args(*argv[:-2])).layout.router_policy == "cache_aware"      # the router's default
    folder = tmp_path / "run"
    RunDir(folder).write_config(cfg, {"run_id": "run"})
    again, run_id, path = resume_run(_args("--resume", str(folder)), {"resume"})
    assert again == cfg and (run_id, path) == ("run", folder)
    planned = compare.Planned("vllm 2x1 router power_of_two serve", "serve", "x", cfg)
    assert compare.Planned.from_dict(json.loads(json.dumps(planned.to_dict()))) == planned


@pytest.mark.parametrize("extra,message", [
    (["--mode", "dp", "--gpus", "2", "--dp-backend", "router", "--router-policy", "fastest"],
     "--router-policy 'fastest': vllm-router routes by"),
    (["--mode", "dp", "--gpus", "2", "--router-policy", "round_robin"], "--router-policy is for --dp-backend router"),
    (["--dp-backend", "router"], "--dp-backend router puts 2 or more servers behind the router"),
    (["--dp", "2", "--tp", "1", "--pp", "2"], "pipeline parallelism (pp=2) is not mapped"),
    (["--dp", "2", "--gpus", "3"], "but --gpus is 3"),
])
def test_bad_layout_flags_are_one_line_before_anything_starts(tiny_model, gsm8k_parquet, extra, message):
    argv = ["--engine", "vllm", "--device", "cpu", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
            "--workload", "serve", *extra]
    with pytest.raises(UsageError, match=re.escape(message)):
        config_from_args(_args(*argv))


def test_an_offline_router_layout_is_refused(tiny_model, gsm8k_parquet):
    with pytest.raises(UsageError, match="--dp-backend router is for --workload serve"):
        config_from_args(_args("--engine", "vllm", "--device", "cpu", "--model", str(tiny_model), "--data",
                               str(gsm8k_parquet), "--dp", "2", "--dp-backend", "router"))
