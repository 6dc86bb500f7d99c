"""Fast unit tests of the pure pipeline steps: sharding, collector, layout, prep (scoring: test_scoring.py)."""
from __future__ import annotations

import json
import random

import pytest

from datasets_prep.gsm8k import INSTRUCTION, PrepError, ground_truth, prepare
from evaluator.collector import CollectError, merge
from evaluator.hosts import cpu_thread_binding
from evaluator.layout import LayoutError, resolve
from evaluator.records import Prompt
from evaluator.sharding import balanced_bounds, contiguous_bounds, make_chunks


def _covers(bounds, n):
    seen = [i for a, b in bounds for i in range(a, b)]
    return seen == list(range(n))


def test_contiguous_shards_cover_every_index_once():
    """Property over many (n, dp): shards are contiguous, ordered, cover range(n) exactly once,
    and differ in size by at most one, so no prompt is dropped when n % dp != 0."""
    for n in range(0, 60):
        for dp in range(1, 9):
            b = contiguous_bounds(n, dp)
            assert len(b) == dp and _covers(b, n)
            sizes = [y - x for x, y in b]
            assert max(sizes) - min(sizes) <= 1
    assert contiguous_bounds(1319, 2) == [(0, 660), (660, 1319)]


def test_balanced_shards_cover_and_balance():
    rng = random.Random(0)
    for _ in range(300):
        n, dp = rng.randint(0, 80), rng.randint(1, 6)
        w = [rng.randint(1, 500) for _ in range(n)]
        b = balanced_bounds(w, dp)
        assert len(b) == dp and _covers(b, n)
        if n >= dp:
            assert all(y > x for x, y in b), "every rank gets work when there is enough"
    # long prompts first: the first rank takes fewer of them
    b = balanced_bounds([100] * 4 + [10] * 40, 2)
    assert b[0][1] - b[0][0] < b[1][1] - b[1][0]


@pytest.mark.parametrize("mode", ["contiguous", "balanced", "dynamic"])
def test_chunks_cover_every_index_once(mode):
    rng = random.Random(1)
    for _ in range(100):
        n, dp = rng.randint(1, 50), rng.randint(1, 4)
        ps = [Prompt(i, "p", "1", rng.randint(1, 50)) for i in range(n)]
        chunks = make_chunks(ps, dp, mode, rng.choice([None, 1, 3, 7]))
        assert sorted(i for c in chunks for i in c.indices) == list(range(n))
        assert len({c.chunk_id for c in chunks}) == len(chunks)
        if mode != "dynamic":
            assert all(c.owner is not None and 0 <= c.owner < dp for c in chunks)


def test_merge_is_independent_of_finishing_order():
    """Replicas finish in any order and return items in any order: the merge is the same."""
    by_rank = {0: [(0, "a"), (1, "b"), (2, "c")], 1: [(3, "d"), (4, "e")]}
    want = merge(by_rank, range(5))
    rng = random.Random(2)
    for _ in range(50):
        shuffled = {r: rng.sample(v, len(v)) for r, v in rng.sample(list(by_rank.items()), 2)}
        assert merge(shuffled, range(5)) == want
    assert [i for _, i, _ in want] == [0, 1, 2, 3, 4]


def test_merge_raises_on_gaps_and_duplicates():
    with pytest.raises(CollectError, match="missing prompt indices: 2"):
        merge({0: [(0, "a"), (1, "b")]}, range(3))
    with pytest.raises(CollectError, match="duplicated prompt indices: 1"):
        merge({0: [(0, "a"), (1, "b")], 1: [(1, "x")]}, range(2))
    with pytest.raises(CollectError, match="never asked for"):
        merge({0: [(0, "a"), (9, "b")]}, range(1))


@pytest.mark.parametrize("mode,gpus,dp,tp,want", [
    ("single", 1, None, None, (1, 1)), ("dp", 4, None, None, (4, 1)), ("tp", 2, None, None, (1, 2)),
    ("hybrid", 4, 2, 2, (2, 2)),
])
def test_layouts(mode, gpus, dp, tp, want):
    l = resolve(mode, gpus, dp, tp)
    assert (l.dp, l.tp) == want


@pytest.mark.parametrize("mode,gpus,dp,tp,msg", [
    ("single", 2, None, None, "exactly 1"), ("dp", 0, None, None, "at least 1"),
    ("hybrid", 4, 2, 3, "dp x tp"), ("hybrid", 4, None, 2, "needs both"), ("ring", 2, None, None, "unknown mode"),
    ("dp", 2, 1, None, "disagree"),
])
def test_impossible_layouts(mode, gpus, dp, tp, msg):
    with pytest.raises(LayoutError, match=msg):
        resolve(mode, gpus, dp, tp)


def test_cpu_binding_one_group_per_tp_rank():
    assert cpu_thread_binding(0, 1, 1) == "0" and cpu_thread_binding(1, 1, 1) == "1"
    assert cpu_thread_binding(0, 2, 1) == "0|1"


def test_prep_from_local_jsonl(tmp_path):
    import pyarrow.parquet as pq
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"question": "Q1?", "answer": "work\n#### 1,200"}) + "\n" +
                   json.dumps({"question": "Q2?", "answer": "#### -4"}) + "\n")
    out = tmp_path / "x.parquet"
    assert prepare(out, "test", str(src), log=lambda m: None) == 2
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["prompt"] == [{"role": "user", "content": "Q1?" + INSTRUCTION}]
    assert rows[0]["reward_model"] == {"style": "rule", "ground_truth": "1200"}
    assert rows[1]["extra_info"]["index"] == 1 and rows[1]["extra_info"]["question"] == "Q2?"
    assert rows[0]["data_source"] == "openai/gsm8k" and rows[0]["ability"] == "math"


def test_prep_names_the_row_without_a_final_answer(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"question": "Q", "answer": "#### 3"}) + "\n" + json.dumps({"question": "Q", "answer": "no end"}) + "\n")
    with pytest.raises(PrepError, match="row 1"):
        prepare(tmp_path / "o.parquet", "test", str(src), log=lambda m: None)
    assert not (tmp_path / "o.parquet").exists()
    assert ground_truth("x #### 1,000", "r") == "1000"


def test_packaged_gsm8k_test_split_has_1319_rows(tmp_path):
    assert prepare(tmp_path / "t.parquet", "test", "packaged", log=lambda m: None) == 1319


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    """NVML numbers every GPU of the host; a process sees those CUDA_VISIBLE_DEVICES names."""
    from evaluator.hosts import _visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible(4) == [0, 1, 2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _visible(4) == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")       # 7 does not exist on a 4-GPU host
    assert _visible(4) == [3]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert _visible(4) is None


def test_a_host_without_nvidia_driver_has_no_gpu():
    """This machine has no driver: NVML fails to load, which means 0 GPUs, not an error."""
    import shutil
    from evaluator.hosts import detect_device, gpu_count, gpus_without_p2p
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU host: the answer would be its GPUs")
    assert gpu_count() == 0 and gpus_without_p2p(2) == [] and detect_device("auto") == "cpu"


def test_weight_bytes_of_a_local_folder(tmp_path):
    from evaluator.modelinfo import weight_bytes
    (tmp_path / "model-00001.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002.safetensors").write_bytes(b"x" * 50)
    assert weight_bytes(str(tmp_path)) == 150 and weight_bytes("Qwen/Qwen2.5-7B-Instruct") is None


def test_summaries_are_read_strictly():
    """A summary is read as what it claims to be: schema 1 (the 2026-11-22 GPU evidence) is read
    by filling what it did not record; an unknown field or a newer schema is an error, not dropped."""
    import json
    from pathlib import Path
    from evaluator.records import SCHEMA_VERSION, RecordError, RunSummary
    old = Path(__file__).resolve().parents[1] / "results" / "evidence" / "2026-11-22-2xH200" / "vllm-single1.json"
    d = json.loads(old.read_text())
    assert d["schema_version"] == 1
    s = RunSummary.from_dict(d)
    assert s.timed_prompts == s.prompts == 1319 and not s.resumed and s.config.workload == "offline"
    assert s.flexible_ci[0] <= s.flexible_accuracy <= s.flexible_ci[1]
    again = RunSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.schema_version == SCHEMA_VERSION
    with pytest.raises(RecordError, match="unknown field"):
        RunSummary.from_dict({**d, "tokens_per_joule": 3})
    with pytest.raises(RecordError, match="schema_version 99"):
        RunSummary.from_dict({**d, "schema_version": 99})
    with pytest.raises(RecordError, match="unknown field"):
        RunSummary.from_dict({**d, "config": {**d["config"], "speculative": True}})


def test_a_missing_real_part_fails_under_make_test(monkeypatch):
    """make test (CI) sets REQUIRE_REAL_PARTS=1: a test that cannot start its real SLURM or Ray
    then fails, where a developer's plain pytest skips it."""
    from tests.conftest import skip_or_fail
    monkeypatch.setenv("REQUIRE_REAL_PARTS", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_REAL_PARTS=1"):
        skip_or_fail("no slurmd here")
    monkeypatch.delenv("REQUIRE_REAL_PARTS")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("no slurmd here")


def test_engine_root_cause_from_its_log():
    """A failed engine start names the error its processes logged (vLLM says only "See root cause
    above", which nobody sees when the engine's log is not streamed)."""
    from launchers.engine_host import root_cause
    log = ["(EngineCore pid=4945) ERROR 12-01 00:05:08 [core.py:1510] Traceback (most recent call last):",
           "(EngineCore pid=4945) ERROR 12-01 00:05:08 [core.py:1510]     raise ValueError(",
           "(EngineCore pid=4945) ERROR 12-01 00:05:08 [core.py:1510] ValueError: To serve at least one request "
           "with the model's max seq len (32768), (0.75 GiB KV cache is needed",
           "Traceback (most recent call last):",
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"]
    assert root_cause(log) == ("ValueError: To serve at least one request with the model's max seq len (32768), "
                               "(0.75 GiB KV cache is needed")
    assert root_cause(["torch.OutOfMemoryError: CUDA out of memory"]) == "torch.OutOfMemoryError: CUDA out of memory"
    assert root_cause(["INFO 12-01 00:05:08 [core.py:1] all good", "    raise ValueError("]) is None


def test_a_killed_attempts_heartbeat_counts_as_paid_time(tmp_path):
    """Attempt 1 is SIGKILLed: its last heartbeat (100 s after it began) is noted by attempt 2,
    so its paid time is 100 s, not 0 (on 9af920f a killed attempt's wall was 0)."""
    import os
    from evaluator.store import RunDir
    from evaluator.summary import attempts_of
    rd = RunDir(tmp_path)
    assert rd.begin_attempt("2026-01-01T00:00:00+00:00") == 1
    first = rd.read_attempts()[1]["first_t"]
    (tmp_path / ".heartbeat").write_text("1")
    os.utime(tmp_path / ".heartbeat", (first + 100, first + 100))
    assert rd.begin_attempt("2026-01-01T00:05:00+00:00") == 2
    a1, a2 = attempts_of(rd)
    assert not a1.finished and a1.wall_s == pytest.approx(100, abs=0.01)
    with rd.heartbeat(2, every_s=0.05):
        import time
        time.sleep(0.2)
    assert (tmp_path / ".heartbeat").read_text() == "2"
