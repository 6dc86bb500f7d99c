"""The model checked against what is already measured (results/evidence/): each multi-device layout
predicted from its own session's single-device run(s) (the stored run stands in for the profile's
engine part), with the probe where one exists and else the datasheet (H200: HBM3e 4.8 TB/s, NVLink
900 GB/s), and set against what that layout measured. Writes README.md (the error table) and
predict-check.json to --out, and prints the table.

    python -m evaluator.predict.evidence --out results/evidence/2026-12-02-predict
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from evaluator.predict import model as M
from evaluator.predict.fit import calibrate
from evaluator.predict.layouts import LayoutInput, Workload, predict
from evaluator.predict.records import AllReducePoint, ModelShape, Profile
from evaluator.predict.stored import observations, read_summary

ROOT = Path(__file__).resolve().parents[2]
EV = ROOT / "results" / "evidence"
H200_BYTES = int(140.4 * 2**30)


@dataclass(frozen=True)
class Case:
    name: str
    model: str                          # a file in OUT/model-shapes: {"config": {...}, "weight_bytes": N}
    single: tuple[str, ...]             # single-device run folders under results/evidence (the calibration)
    layouts: tuple[str, ...]            # multi-device run folders to predict
    cpu_probe: bool = False             # CPU: this machine's probe stands in (no probe was stored with the runs)


CASES = (
    Case("2xH200 2026-11-30 vLLM offline+serve", "qwen2.5-7b",
         ("2026-11-30-2xH200/vllm-offline/vllm-single", "2026-11-30-2xH200/vllm-serve/vllm-single-serve"),
         ("2026-11-30-2xH200/vllm-offline/vllm-dp2", "2026-11-30-2xH200/vllm-offline/vllm-tp2",
          "2026-11-30-2xH200/vllm-serve/vllm-dp2-serve", "2026-11-30-2xH200/vllm-serve/vllm-dp2-native-serve",
          "2026-11-30-2xH200/vllm-serve/vllm-tp2-serve")),
    Case("2xH200 2026-11-30 vLLM bench r1", "qwen2.5-7b", ("2026-11-30-2xH200/bench-vllm/runs/r1-1x1-contiguous",),
         ("2026-11-30-2xH200/bench-vllm/runs/r1-2x1-contiguous",)),
    Case("2xH200 2026-11-30 vLLM bench r2", "qwen2.5-7b", ("2026-11-30-2xH200/bench-vllm/runs/r2-1x1-contiguous",),
         ("2026-11-30-2xH200/bench-vllm/runs/r2-2x1-contiguous",)),
    Case("2xH200 2026-11-30 SGLang bench r1", "qwen2.5-7b", ("2026-11-30-2xH200/bench-sglang/runs/r1-1x1-contiguous",),
         ("2026-11-30-2xH200/bench-sglang/runs/r1-2x1-contiguous",)),
    Case("2xH200 2026-11-30 SGLang bench r2", "qwen2.5-7b", ("2026-11-30-2xH200/bench-sglang/runs/r2-1x1-contiguous",),
         ("2026-11-30-2xH200/bench-sglang/runs/r2-2x1-contiguous",)),
    Case("2xH200 2026-11-22 vLLM offline", "qwen2.5-7b", ("2026-11-22-2xH200/vllm-single1.json",),
         ("2026-11-22-2xH200/vllm-dp2.json", "2026-11-22-2xH200/vllm-tp2.json")),
    Case("2xH200 2026-11-22 SGLang offline", "qwen2.5-7b", ("2026-11-22-2xH200/sglang-single1.json",),
         ("2026-11-22-2xH200/sglang-dp2.json", "2026-11-22-2xH200/sglang-tp2.json",
          "2026-11-22-2xH200/sglang-dp2-native-cold.json")),
    Case("1xH200 2026-12-01 profile -> 2xH200 2026-11-30 serve", "qwen2.5-7b",
         ("2026-12-01-1xH200/a/vllm-7b-serve",),
         ("2026-11-30-2xH200/vllm-serve/vllm-dp2-serve", "2026-11-30-2xH200/vllm-serve/vllm-dp2-native-serve",
          "2026-11-30-2xH200/vllm-serve/vllm-tp2-serve")),
    Case("CPU 2026-12-01 capacity, GSM8K (tiny model)", "tiny", ("2026-12-01-cpu/capacity-gsm8k/vllm-single-serve",),
         ("2026-12-01-cpu/capacity-gsm8k/vllm-dp2-serve", "2026-12-01-cpu/capacity-gsm8k/vllm-tp2-serve"), True),
    Case("CPU 2026-12-01 capacity, 800-token prompts (tiny model)", "tiny",
         ("2026-12-01-cpu/capacity-long/vllm-single-serve",),
         ("2026-12-01-cpu/capacity-long/vllm-dp2-serve", "2026-12-01-cpu/capacity-long/vllm-tp2-serve"), True),
    *(Case(f"CPU 2026-12-01 bench r{r} (tiny model)", "tiny",
           (f"2026-12-01-cpu/bench/20261202-001323-vllm-dp2/runs/r{r}-1x1-contiguous",),
           (f"2026-12-01-cpu/bench/20261202-001323-vllm-dp2/runs/r{r}-2x1-contiguous",), True) for r in (1, 2, 3)),
    *(Case(f"CPU 2026-12-02 bench r{r} (demo 0.5B model)", "qwen2.5-coder-0.5b",
           (f"2026-12-02-cpu/bench/20261202-062957-vllm-dp2/runs/r{r}-1x1-contiguous",),
           (f"2026-12-02-cpu/bench/20261202-062957-vllm-dp2/runs/r{r}-2x1-contiguous",), True) for r in (1, 2, 3)),
)


def load_run(rel: str):
    """A summary from a run folder or a bare summary JSON file (the 2026-11-22 evidence)."""
    path = EV / rel
    if path.is_file():
        from evaluator.records import RunSummary
        return RunSummary.from_dict(json.loads(path.read_text()))
    return read_summary(path)


def limits_for(s, serving: bool) -> M.Limits:
    from launchers.engines.base import EngineSpec, batch_limits
    c = s.config
    spec = EngineSpec(model=c.model, tp=c.tp, device=c.device, engine_kwargs=dict(c.engine_kwargs),
                      max_model_len=c.max_model_len)
    seqs, tokens = batch_limits(c.engine, spec, serving, H200_BYTES if c.device == "cuda" else None)
    kv = next((r.kv_cache_tokens for r in s.replicas if getattr(r, "kv_cache_tokens", None)), None)
    return M.Limits(seqs, tokens, kv)


def shape_of(name: str, models: Path) -> ModelShape:
    d = json.loads((models / f"{name}.json").read_text())
    return ModelShape.from_config(d["config"], d["weight_bytes"])


def cpu_probe(out: Path, shapes: list[ModelShape]) -> dict:
    """This machine's probe (bandwidth, gloo all-reduce between 2 CPU devices), measured once and kept."""
    path = out / "probe-cpu.json"
    if path.is_file():
        return json.loads(path.read_text())
    from evaluator.predict.probe import message_sizes, probe
    sizes = sorted({n for s in shapes for n in message_sizes(s.hidden * s.dtype_bytes, 8192)})
    bw, points, backend = probe("cpu", 2, sizes)
    found = {"bandwidth_bytes_per_s": bw, "backend": backend, "allreduce": [p.__dict__ for p in points]}
    path.write_text(json.dumps(found, indent=1) + "\n")
    return found


def error(predicted: float, measured: float) -> float:
    return predicted / measured - 1


def check(case: Case, models: Path, probe: dict | None) -> dict:
    shape = shape_of(case.model, models)
    singles = [load_run(rel) for rel in case.single]
    offline, serve = [], []
    for rel, s in zip(case.single, singles):
        o, l = observations(s, rel)
        offline += o
        serve += l
    first = singles[0]
    profile = Profile(engine=first.config.engine, device=first.config.device, device_name=first.device_name or
                      ("NVIDIA H200" if first.config.device == "cuda" else "cpu"), model=first.config.model,
                      shape=shape, offline=tuple(offline), serve=tuple(serve),
                      bandwidth_bytes_per_s=probe["bandwidth_bytes_per_s"] if probe else None,
                      bandwidth_source="this machine's probe, 2026-12-02" if probe else "",
                      allreduce=tuple(AllReducePoint(**p) for p in probe["allreduce"]) if probe else (),
                      allreduce_source="gloo between 2 CPU devices of this machine, 2026-12-02" if probe else "",
                      source=", ".join(case.single))
    off_s = next((s for s in singles if s.config.workload == "offline"), first)
    serve_s = next((s for s in singles if s.config.workload == "serve"), first)
    cal = calibrate(profile, limits_for(off_s, False), limits_for(serve_s, True))
    rows = []
    for rel, s in [*zip(case.single, singles), *((rel, load_run(rel)) for rel in case.layouts)]:
        c = s.config
        label = f"{c.engine} {'single' if c.dp * c.tp == 1 else f'dp={c.dp}' if c.tp == 1 else f'tp={c.tp}'}" + \
            (" native" if c.dp_backend == "native" else "")
        layout = LayoutInput(label, c.dp, c.tp, c.dp_backend, limits_for(s, c.workload == "serve"))
        calibration = rel in case.single
        if c.workload == "offline":
            o = observations_any(s)
            p = predict(shape, cal, layout, Workload("offline", s.prompts, o[0], o[1]))
            rows.append({"layout": label, "run": rel, "workload": "offline", "calibration": calibration,
                         "predicted_s": p.generate_s, "measured_s": s.generate_s,
                         "error": error(p.generate_s, s.generate_s), "terms": p.terms()})
            continue
        if s.capacity and s.capacity.get("rate"):
            done = [l for l in s.levels if l.get("ok")]
            prompt = statistics.mean(l.get("prompt_tokens_mean") or s.prompt_tokens / max(s.prompts, 1) for l in done)
            out = statistics.mean(l.get("output_tokens_mean") or c.sampling.max_tokens for l in done)
            slo = (c.serve.slo_ttft_ms / 1000 if c.serve.slo_ttft_ms else None,
                   c.serve.slo_tpot_ms / 1000 if c.serve.slo_tpot_ms else None)
            p = predict(shape, cal, layout, Workload("serve", 0, prompt, out, "rate", (), *slo))
            rows.append({"layout": label, "run": rel, "workload": "capacity", "calibration": calibration,
                         "predicted_rps": p.capacity_rps, "measured_rps": s.capacity["rate"],
                         "error": error(p.capacity_rps, s.capacity["rate"]), "devices": c.dp * c.tp,
                         "note": f"p{c.serve.slo_percentile:g} SLOs measured, medians predicted"})
        for level in s.levels:
            if level.get("level_kind") not in ("concurrency", "rate") or not level.get("ok"):
                continue
            prompt = level.get("prompt_tokens_mean") or s.prompt_tokens / max(s.prompts, 1)
            out = level.get("output_tokens_mean") or c.sampling.max_tokens
            p = predict(shape, cal, layout, Workload("serve", 0, prompt, out, level["level_kind"], (level["level_value"],)))
            lp = p.levels[0]
            rows.append({"layout": label, "run": rel, "workload": "serve", "calibration": calibration,
                         "level": level["level"], "predicted_tpot_ms": 1000 * lp["tpot_s"],
                         "measured_tpot_ms": level["tpot_ms_p50"], "error": error(lp["tpot_s"] * 1000, level["tpot_ms_p50"]),
                         "predicted_ttft_ms": 1000 * lp["ttft_s"], "measured_ttft_ms": level["ttft_ms_p50"],
                         "ttft_error": error(lp["ttft_s"] * 1000, level["ttft_ms_p50"]) if level["ttft_ms_p50"] else None,
                         "saturated": lp["saturated"], "terms": lp["terms"],
                         "measured_tok_s_per_device": level["output_tokens_per_s"] / (c.dp * c.tp),
                         "predicted_tok_s_per_device": lp["output_tokens_per_s"] / (c.dp * c.tp)})
    return {"case": case.name, "calibration": {"flops_per_s": cal.flops_per_s, "step_overhead_s": cal.step_overhead_s,
                                                "per_seq_s": cal.per_seq_s, "server_step_s": cal.server_step_s,
                                                "ttft_fixed_s": cal.ttft_fixed_s, "bandwidth": cal.bandwidth_source,
                                                "allreduce": cal.allreduce.source,
                                                "fit": [list(f) for f in cal.fit]},
            "rows": rows, "ranking": ranking(rows)}


def observations_any(s) -> tuple[float, float]:
    """(mean prompt tokens, mean answer tokens) of an offline run of any layout."""
    prompts = s.timed_prompts or s.prompts
    return s.prompt_tokens / s.prompts, (s.timed_completion_tokens or s.completion_tokens) / prompts


def ranking(rows: list[dict]) -> dict:
    """Layouts ordered by measured and by predicted speed: offline by generate time; serving by
    output tokens/s per device at the heaviest level they all ran."""
    out = {}
    off = [r for r in rows if r["workload"] == "offline"]
    if len({r["layout"] for r in off}) > 1:
        out["offline"] = {"measured": [r["layout"] for r in sorted(off, key=lambda r: r["measured_s"])],
                          "predicted": [r["layout"] for r in sorted(off, key=lambda r: r["predicted_s"])]}
    cap = [r for r in rows if r["workload"] == "capacity"]
    if len(cap) > 1:
        out["capacity per device"] = {
            "measured": [r["layout"] for r in sorted(cap, key=lambda r: -r["measured_rps"] / r["devices"])],
            "predicted": [r["layout"] for r in sorted(cap, key=lambda r: -r["predicted_rps"] / r["devices"])]}
    serve = [r for r in rows if r["workload"] == "serve" and r["level"].startswith("c=")]
    layouts = {r["layout"] for r in serve}
    common = [lv for lv in dict.fromkeys(r["level"] for r in serve)
              if sum(1 for r in serve if r["level"] == lv) == len(layouts)]
    if len(layouts) > 1 and common:
        heavy = max(common, key=lambda lv: float(lv.split("=")[1].rstrip("/s")))
        at = [r for r in serve if r["level"] == heavy]
        out[f"serve at {heavy}"] = {
            "measured": [r["layout"] for r in sorted(at, key=lambda r: -r["measured_tok_s_per_device"])],
            "predicted": [r["layout"] for r in sorted(at, key=lambda r: -r["predicted_tok_s_per_device"])]}
    for v in out.values():
        v["top3_equal"] = v["measured"][:3] == v["predicted"][:3]
    return out


def median_abs(values: list[float]) -> float | None:
    return statistics.median(abs(v) for v in values) if values else None


def table(results: list[dict]) -> list[str]:
    lines = ["| case | layout | workload | level | predicted | measured | error | terms (predicted) |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for res in results:
        for r in res["rows"]:
            mark = " (calibration)" if r["calibration"] else ""
            if r["workload"] == "offline":
                lines.append(f"| {res['case']} | {r['layout']}{mark} | offline generate | | {r['predicted_s']:.2f} s | "
                             f"{r['measured_s']:.2f} s | {100 * r['error']:+.0f}% | {r['terms']} |")
            elif r["workload"] == "capacity":
                lines.append(f"| {res['case']} | {r['layout']}{mark} | capacity at SLO | | {r['predicted_rps']:.3g} req/s | "
                             f"{r['measured_rps']:.3g} req/s | {100 * r['error']:+.0f}% | {r['note']} |")
            else:
                lines.append(f"| {res['case']} | {r['layout']}{mark} | TPOT p50 | {r['level']} | "
                             f"{r['predicted_tpot_ms']:.2f} ms{' (saturated)' if r['saturated'] else ''} | "
                             f"{r['measured_tpot_ms']:.2f} ms | {100 * r['error']:+.0f}% | {r['terms']} |")
    return lines


def compact(results: list[dict]) -> list[str]:
    """One line per predicted layout: offline error, or TPOT error per level (and TTFT's median)."""
    lines = ["| case | layout | offline generate error | TPOT error per level | TTFT error (median) | capacity error |",
             "|---|---|---:|---|---:|---:|"]
    for res in results:
        for layout in dict.fromkeys(r["layout"] for r in res["rows"] if not r["calibration"]):
            rows = [r for r in res["rows"] if r["layout"] == layout and not r["calibration"]]
            off = next((f"{100 * r['error']:+.0f}%" for r in rows if r["workload"] == "offline"), "")
            serve = [r for r in rows if r["workload"] == "serve"]
            tpot = ", ".join(f"{r['level']} {100 * r['error']:+.0f}%" for r in serve)
            ttft = median_abs([r["ttft_error"] for r in serve if r["ttft_error"] is not None])
            cap = next((f"{100 * r['error']:+.0f}%" for r in rows if r["workload"] == "capacity"), "")
            lines.append(f"| {res['case']} | {layout} | {off} | {tpot} | {'' if ttft is None else f'{100 * ttft:.0f}%'} "
                         f"| {cap} |")
    return lines


def readme(results: list[dict], summary: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"
    m, g = summary["median_abs_error"], summary["median_abs_error_gpu"]
    rank = ["| case | what | measured order | predicted order | top 3 equal |", "|---|---|---|---|---|"]
    rank += [f"| {r['case']} | {r['what']} | {', '.join(r['measured'])} | {', '.join(r['predicted'])} | "
             f"{'yes' if r['top3_equal'] else 'no'} |" for r in summary["rankings"]]
    return "\n".join([
        "# The performance model against the stored evidence (2026-12-02)", "",
        "Each multi-device layout predicted from its own session's single-device run(s), then set against",
        "what it measured. Made by:", "", "```bash", "python -m evaluator.predict.evidence --out "
        "results/evidence/2026-12-02-predict", "```", "",
        "GPU cases: bandwidth, link and peak FLOP/s from the H200 datasheet (no probe ran on those hosts);",
        "CPU cases: this machine's probe (`probe-cpu.json`: one core's read bandwidth, gloo all-reduce",
        "between two one-core devices), taken on 2026-12-02 while other sessions loaded the machine.",
        "`model-shapes/` holds the models' config.json fields and weight bytes (the runs' model folders are gone).",
        "Calibration rows are the single-device runs themselves; errors are (predicted − measured) / measured;",
        "TPOT and TTFT are medians (p50) per level. `predict-check.json` has every row.", "",
        "## Summary", "",
        "| | offline generate | serving TPOT | serving TTFT | capacity at SLO |", "|---|---:|---:|---:|---:|",
        f"| median \\|error\\|, all cases ({summary['predictions']['offline']} offline, "
        f"{summary['predictions']['serve_levels']} levels) | {pct(m['offline_generate'])} | {pct(m['serve_tpot'])} | "
        f"{pct(m['serve_ttft'])} | {pct(m['capacity'])} |",
        f"| median \\|error\\|, GPU cases | {pct(g['offline_generate'])} | {pct(g['serve_tpot'])} | "
        f"{pct(g['serve_ttft'])} | - |", "",
        f"Top-3 ranking equal to the measured one in {summary['top3_equal']} of {summary['rankings_checked']} "
        f"comparisons:", "", *rank, "",
        "## Per layout", "", *compact(results), "",
        "## Every row", "", *table(results), ""])


def summarize(results: list[dict]) -> dict:
    rows = [r for res in results for r in res["rows"] if not r["calibration"]]
    gpu = [r for res in results if "H200" in res["case"] for r in res["rows"] if not r["calibration"]]
    rankings = [(res["case"], k, v) for res in results for k, v in res["ranking"].items()]

    def med(rs, kind, key="error"):
        return median_abs([r[key] for r in rs if r["workload"] == kind and r.get(key) is not None])
    return {"median_abs_error": {"offline_generate": med(rows, "offline"), "serve_tpot": med(rows, "serve"),
                                 "serve_ttft": med(rows, "serve", "ttft_error"), "capacity": med(rows, "capacity")},
            "median_abs_error_gpu": {"offline_generate": med(gpu, "offline"), "serve_tpot": med(gpu, "serve"),
                                     "serve_ttft": med(gpu, "serve", "ttft_error")},
            "predictions": {"offline": sum(r["workload"] == "offline" for r in rows),
                            "serve_levels": sum(r["workload"] == "serve" for r in rows)},
            "rankings": [{"case": c, "what": k, **v} for c, k, v in rankings],
            "top3_equal": sum(v["top3_equal"] for _, _, v in rankings), "rankings_checked": len(rankings)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluator.predict.evidence",
                                description="Predict each stored multi-device layout from its single-device run and "
                                            "print the error per layout (see the module docstring).")
    p.add_argument("--out", default="results/evidence/2026-12-02-predict",
                   help="folder for README.md, predict-check.json and this machine's CPU probe (probe-cpu.json, "
                        "measured once when absent); the models' shapes are read from OUT/model-shapes/")
    args = p.parse_args(argv)
    out = Path(args.out)
    models = out / "model-shapes"
    if not models.is_dir():
        p.exit(2, f"error: {models}: no such folder (the models' config.json and weight bytes live there)\n")
    probe = None
    if any(c.cpu_probe for c in CASES):
        probe = cpu_probe(out, [shape_of(c.model, models) for c in CASES if c.cpu_probe])
    results = [check(c, models, probe if c.cpu_probe else None) for c in CASES]
    summary = summarize(results)
    (out / "predict-check.json").write_text(json.dumps({"summary": summary, "cases": results}, indent=1) + "\n")
    (out / "README.md").write_text(readme(results, summary))
    print("\n".join(compact(results)))
    print(json.dumps(summary["median_abs_error"]), json.dumps(summary["median_abs_error_gpu"]),
          f"top-3 rankings equal: {summary['top3_equal']} of {summary['rankings_checked']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
