"""The model's free numbers, fitted to one device's measurements: effective FLOP/s, the overhead
per step, the host work per sequence per step, and (from serving rows only) the server's own work
per step, in relative error with a Cauchy loss; then, from what the fit leaves, the fixed seconds a
stored offline run spends besides its engine's steps (dispatch, collection, storing), and from
serving rows the fixed latency in front of the engine and how far the SLO percentile sits above
the median. The bandwidth is never fitted:
the probe's reading, else the datasheet's.

    python -m evaluator.predict.evidence    # fits each stored session's single-device runs
"""
from __future__ import annotations

import dataclasses

from evaluator.predict.model import (AllReduceCost, Calibration, Limits, datasheet, offline, prefill, serve_level,
                                     step)
from evaluator.predict.records import Profile

def calibrate(profile: Profile, offline_limits: Limits, serve_limits: Limits) -> Calibration:
    """Fit effective FLOP/s, step overhead and per-sequence host work to every single-device
    measurement of the profile (relative error; a Cauchy loss, so a row the model cannot explain,
    such as a server whose front end saturates, pulls little), with the bandwidth fixed to the probe's reading, else the datasheet's."""
    import numpy as np
    from scipy.optimize import least_squares
    m = profile.shape
    sheet = datasheet(profile.device_name)
    if profile.bandwidth_bytes_per_s:
        bw, bw_source = profile.bandwidth_bytes_per_s, f"probe ({profile.bandwidth_source})"
    elif sheet:
        bw, bw_source = sheet.memory_bytes_per_s, f"datasheet: {sheet.name}"
    else:
        raise ValueError(f"no memory bandwidth for {profile.device_name}: the profile has no probe reading and no "
                         f"datasheet is known (python -m evaluator.profile measures one)")
    link = AllReduceCost(profile.allreduce, sheet.link_bytes_per_s if sheet else None,
                         profile.allreduce_source or (f"datasheet: {sheet.name}" if sheet else "none"))
    peak = sheet.flops_per_s if sheet else None
    rows = calibration_rows(profile, offline_limits, serve_limits)
    if not rows:
        raise ValueError("the profile holds no single-device measurement to fit")
    # weak priors hold what the rows cannot tell apart (a lone offline batch says nothing of overheads);
    # the server's own step is fitted only where serving rows tell it, else it is none
    serving = any(row[0] == "serve" for row in rows)
    prior = np.log([peak * 0.5 if peak else 5e10, 1e-3, 1e-6, 1e-4 if serving else 1e-9])

    def calib(x) -> Calibration:
        flops, over, per_seq, server = np.exp(x)
        return Calibration(bandwidth_bytes_per_s=bw, bandwidth_source=bw_source, flops_per_s=flops,
                           step_overhead_s=over, per_seq_s=per_seq, server_step_s=server if serving else 0.0,
                           allreduce=link, peak_flops_per_s=peak)

    def residuals(x):
        cal = calib(x)
        r = [predict_row(m, cal, row) / row[2] - 1 for row in rows]
        return np.array(r + list(0.02 * (x - prior)))
    fit = least_squares(residuals, prior, loss="cauchy", f_scale=0.1,
                        bounds=(np.log([1e6, 1e-8, 1e-10, 1e-10]), np.log([1e17, 10.0, 1.0, 10.0])))
    cal = calib(fit.x)
    # what the engine's model leaves of TTFT at the lightest level: HTTP, tokenising, the server's queue
    light = sorted((row for row in rows if row[0] == "serve" and row[3]), key=lambda row: row[1].value)
    fixed = max(0.0, light[0][3] - predict_row(m, cal, light[0], ttft=True)) if light else 0.0
    tails = [(row[1].tpot_tail_s / row[1].tpot_s, row[1].ttft_tail_s / row[1].ttft_s if row[1].ttft_s and
              row[1].ttft_tail_s else None) for row in rows if row[0] == "serve" and row[1].tpot_tail_s]
    tpot_tail = sorted(t for t, _ in tails)[len(tails) // 2] if tails else 1.0
    ttft_tails = sorted(t for _, t in tails if t)
    # what a stored offline run took beyond its engine's steps (the profile times bare engine calls)
    runs = sorted(row[2] - predict_row(m, cal, row) for row in rows if row[0] == "offline")
    done = dataclasses.replace(cal, ttft_fixed_s=fixed, batch_fixed_s=max(0.0, runs[len(runs) // 2]) if runs else 0.0,
                               tail_tpot=tpot_tail,
                               tail_ttft=ttft_tails[len(ttft_tails) // 2] if ttft_tails else 1.0)
    return dataclasses.replace(done, fit=tuple((row_name(row), predict_row(m, done, row), row[2]) for row in rows))


def calibration_rows(profile: Profile, offline_limits: Limits, serve_limits: Limits) -> list[tuple]:
    """(kind, observation, measured seconds, measured TTFT or None, limits) per measurement."""
    rows = [("decode", d, d.step_s, None, offline_limits) for d in profile.decode]
    rows += [("prefill", p, p.seconds, None, offline_limits) for p in profile.prefill]
    rows += [("offline", o, o.generate_s, None, offline_limits) for o in profile.offline]
    rows += [("serve", s, s.tpot_s, s.ttft_s, serve_limits) for s in profile.serve]
    return rows


def row_name(row: tuple) -> str:
    kind, o = row[0], row[1]
    if kind == "decode":
        return f"decode step, batch {o.batch}, context {o.context_tokens:.0f}"
    if kind == "prefill":
        return f"prefill of {o.tokens} tokens"
    if kind == "offline":
        return f"offline {o.prompts} prompts x {o.output_tokens:.0f} tokens"
    return f"serve {'c=' if o.kind == 'concurrency' else 'rate='}{o.value:g} TPOT"


def predict_row(m: ModelShape, cal: Calibration, row: tuple, ttft: bool = False) -> float:
    """The model's value for one calibration row on one device (TPOT or, with ttft, TTFT for serving)."""
    kind, o, _, _, limits = row
    if kind == "decode":
        return step(m, cal, 1, o.batch, o.context_tokens).total_s
    if kind == "prefill":
        return prefill(m, cal, 1, o.tokens, o.seqs, o.context_tokens, limits.max_batched_tokens).total_s
    if kind == "offline":
        return offline(m, cal, 1, o.prompts, o.prompt_tokens, o.output_tokens, limits).generate_s
    lp = serve_level(m, cal, 1, 1, o.kind, o.value, o.prompt_tokens, o.output_tokens, limits)
    return lp.ttft_s if ttft else lp.tpot_s
