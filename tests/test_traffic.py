"""Unit tests of evaluator.traffic on the tiny test model's real tokenizer (a trained byte-level
BPE and a Qwen-style chat template): JSONL, ShareGPT and synthetic traffic, each prompt's token
count checked against the tokenizer itself (apply_chat_template in the test, not the module's
own counting), and every bad input refused with a TrafficError that names its line.

    .venv/bin/python -m pytest tests/test_traffic.py -q
"""
from __future__ import annotations

import json

import pytest

from evaluator.traffic import Traffic, TrafficError, TrafficRequest, load_traffic


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


def templated(tok, messages) -> list[int]:
    """The prompt's token ids as the server builds them: the chat template with the generation prompt."""
    ids = tok.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def overhead(tok) -> int:
    return len(templated(tok, [{"role": "user", "content": ""}]))


def load(spec, tok, **kw):
    kw.setdefault("max_model_len", None)
    kw.setdefault("default_max_tokens", 64)
    return load_traffic(str(spec), tok, **kw)


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ---- JSONL -------------------------------------------------------------------------------------

def test_jsonl_prompt_tokens_and_output_lengths(tok, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "How many eggs?"}], "output_tokens": 5},
            {"messages": [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": "She has 3 apples and buys 7 more. How many apples? " * 6}],
             "output_tokens": 50},
            {"messages": [{"role": "user", "content": "the total cost of the eggs " * 30}], "max_tokens": 200}]
    t = load(write_jsonl(tmp_path / "requests.jsonl", rows), tok)
    expected = [len(templated(tok, r["messages"])) for r in rows]
    assert len(set(expected)) == 3, "the three requests must differ in length for this test to mean anything"
    assert [r.prompt_tokens for r in t.requests] == expected
    assert [r.max_tokens for r in t.requests] == [5, 50, 200]
    assert [r.index for r in t.requests] == [0, 1, 2]
    assert [list(r.messages) for r in t.requests] == [r["messages"] for r in rows]
    assert t.name == "requests.jsonl" and t.fixed_output
    assert not t.has_timestamps and not t.has_sessions
    shape = t.shape()
    assert shape["requests"] == 3
    assert shape["prompt_tokens_p50"] == sorted(expected)[1]
    assert shape["prompt_tokens_mean"] == pytest.approx(sum(expected) / 3)
    assert shape["max_tokens_p50"] == 50 and shape["max_tokens_mean"] == pytest.approx(85)
    assert shape["max_tokens_p90"] == 200   # the nearest rank of 5, 50, 200


def test_prompt_string_and_mixed_output_lengths(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "How many apples?", "output_tokens": 9}, "",
                                              {"prompt": "How many eggs does she have left?"}])
    t = load(path, tok)
    assert t.requests[0].messages == ({"role": "user", "content": "How many apples?"},)
    assert t.requests[1].prompt_tokens == len(templated(tok, [{"role": "user", "content": "How many eggs does she have left?"}]))
    assert [r.max_tokens for r in t.requests] == [9, None]
    assert not t.fixed_output                                 # mixed is allowed, not fixed
    assert t.shape()["max_tokens_mean"] is None and t.shape()["max_tokens_p90"] is None


def test_sessions_numbered_into_turns(tok, tmp_path):
    system = {"role": "system", "content": "Answer briefly."}
    u = [{"role": "user", "content": f"question {k}: how many apples " * (k + 1)} for k in range(4)]
    rows = [{"messages": [system, u[0]], "session": "a", "timestamp": 0},
            {"messages": [u[1]], "session": 7, "timestamp": 0.5},
            {"prompt": "no session here", "timestamp": 0.5},
            {"messages": [u[2]], "session": "a", "timestamp": 2},
            {"messages": [u[3]], "session": "a", "timestamp": 3.25}]
    t = load(write_jsonl(tmp_path / "s.jsonl", rows), tok)
    assert [r.session for r in t.requests] == ["a", "7", None, "a", "a"]
    assert [r.turn for r in t.requests] == [0, 0, 0, 1, 2]
    assert [r.timestamp_s for r in t.requests] == [0.0, 0.5, 0.5, 2.0, 3.25]
    assert t.has_sessions and t.has_timestamps
    assert t.requests[3].messages == (u[2],)                 # only this turn's new message
    # a later turn counts the session's earlier messages too, the (unknown) answers left out
    assert t.requests[3].prompt_tokens == len(templated(tok, [system, u[0], u[2]]))
    assert t.requests[4].prompt_tokens == len(templated(tok, [system, u[0], u[2], u[3]]))
    assert t.requests[1].prompt_tokens == len(templated(tok, [u[1]]))
    # limit: the first N lines, turns as far as they go
    assert [r.turn for r in load(tmp_path / "s.jsonl", tok, limit=4).requests] == [0, 0, 0, 1]


# ---- ShareGPT ----------------------------------------------------------------------------------

def test_sharegpt(tok, tmp_path):
    reply0 = "She has 3 + 7 = 10 apples. #### 10"
    reply2 = "Each day she sells 16 eggs, so the total is 112. #### 112 " * 3
    data = [{"id": "x", "conversations": [{"from": "system", "value": "Be brief."},
                                          {"from": "human", "value": "How many apples?"},
                                          {"from": "gpt", "value": reply0},
                                          {"from": "human", "value": "and then?"}, {"from": "gpt", "value": "more"}]},
            {"conversations": [{"from": "human", "value": "no reply here"}]},            # skipped
            {"conversation": [{"from": "gpt", "value": "hello"}, {"from": "user", "value": "How many eggs?"},
                              {"from": "assistant", "value": reply2}]},
            {"conversations": []}]                                                    # skipped
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    t = load(path, tok)
    assert t.name == "sharegpt.json" and t.fixed_output and len(t.requests) == 2
    first, second = t.requests
    assert first.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many apples?"})
    assert first.prompt_tokens == len(templated(tok, first.messages))
    assert second.messages == ({"role": "user", "content": "How many eggs?"},)
    assert first.max_tokens == len(tok.encode(reply0, add_special_tokens=False))
    assert second.max_tokens == len(tok.encode(reply2, add_special_tokens=False))
    assert first.max_tokens != second.max_tokens
    assert len(load(path, tok, limit=1).requests) == 1

    path.write_text(json.dumps(data[1:2] + data[3:]))
    with pytest.raises(TrafficError, match="none of its 2 entries has a human message followed by a gpt reply"):
        load(path, tok)
    path.write_text('[\n{"conversations": []},\n{"conversations": [}\n]')
    with pytest.raises(TrafficError, match=r"sharegpt.json line 3: not valid JSON"):
        load(path, tok)


# ---- synthetic ---------------------------------------------------------------------------------

def check_exact(tok, t: Traffic) -> None:
    for r in t.requests:
        assert len(templated(tok, r.messages)) == r.prompt_tokens, f"request {r.index}"


def test_synthetic_fixed_lengths_are_exact(tok):
    t = load("synthetic:n=40,in=120,out=30", tok)
    assert len(t.requests) == 40 and t.fixed_output and t.name == "synthetic n=40 in=120 out=30"
    assert {r.prompt_tokens for r in t.requests} == {120} and {r.max_tokens for r in t.requests} == {30}
    check_exact(tok, t)
    assert len({r.messages[0]["content"] for r in t.requests}) == 40     # random, not one prompt repeated
    assert [r.messages[0]["role"] for r in t.requests] == ["user"] * 40
    # the smallest possible prompt: the template plus one token of content
    check_exact(tok, load(f"synthetic:n=5,in={overhead(tok) + 1},out=1", tok))


@pytest.mark.parametrize("in_dist,out_dist,lo,hi,out_lo,out_hi", [
    ("uniform(20,400)[40:300]", "uniform(1,60)", 40, 300, 1, 60),
    ("normal(150,60)[30:260]", "normal(20,30)[:50]", 30, 260, 1, 50),   # out below 1 is raised to 1
    ("lognormal(100,0.8)[30:]", "lognormal(30,1)[5:80]", 30, None, 5, 80),
])
def test_synthetic_distributions_exact_and_bounded(tok, in_dist, out_dist, lo, hi, out_lo, out_hi):
    t = load(f"synthetic:n=80,in={in_dist},out={out_dist},seed=3", tok)
    check_exact(tok, t)
    ins, outs = [r.prompt_tokens for r in t.requests], [r.max_tokens for r in t.requests]
    assert min(ins) >= lo and (hi is None or max(ins) <= hi)
    assert min(outs) >= out_lo and max(outs) <= out_hi
    assert len(set(ins)) > 20 and len(set(outs)) > 5                     # drawn, not fixed
    assert all(isinstance(x, int) for x in ins + outs)


def test_synthetic_bounds_clip(tok):
    t = load("synthetic:n=30,in=uniform(10,1000)[60:70],out=normal(100,50)[3:4]", tok)
    assert {r.prompt_tokens for r in t.requests} <= set(range(60, 71))
    assert {r.prompt_tokens for r in t.requests} & {60, 70}              # the clipped tails land on the bounds
    assert {r.max_tokens for r in t.requests} <= {3, 4}
    check_exact(tok, t)


@pytest.mark.parametrize("n,prefix,prefixes,in_dist", [
    (12, 30, 3, "uniform(60,150)"),
    (32, 60, 8, "uniform(90,160)"),    # long prefixes: their decoded text often re-encodes to fewer tokens
    (200, 1, 50, "uniform(20,40)"),    # one-token prefixes: they collide and merge with what follows unless kept apart
])
def test_shared_prefixes(tok, n, prefix, prefixes, in_dist):
    """Requests with the same prefix id start with the same text, whose tokens are exactly
    `prefix` long and stay the same tokens in every request's templated prompt (what a server's
    prefix cache needs); different prefix ids start differently."""
    t = load(f"synthetic:n={n},in={in_dist},out=8,prefix={prefix},prefixes={prefixes}", tok)
    check_exact(tok, t)
    contents = [r.messages[0]["content"] for r in t.requests]
    header = len(tok.encode("<|im_start|>user\n", add_special_tokens=False))
    leads = {}
    for k in range(prefixes):
        texts = contents[k::prefixes]
        ids = [tok.encode(c, add_special_tokens=False) for c in texts]
        assert all(x[:prefix] == ids[0][:prefix] for x in ids), f"prefix {k}: leading {prefix} tokens differ"
        lead = tok.decode(ids[0][:prefix])
        assert len(tok.encode(lead, add_special_tokens=False)) == prefix
        assert all(c.startswith(lead) for c in texts), f"prefix {k}: leading text differs"
        assert len(set(texts)) == len(texts)                              # the rest is each request's own
        prompts = [templated(tok, [{"role": "user", "content": c}]) for c in texts]
        assert all(p[:header + prefix] == prompts[0][:header + prefix] for p in prompts)
        leads[k] = tuple(ids[0][:prefix])
    assert len(set(leads.values())) == prefixes                           # distinct prefix ids differ


def test_one_shared_prefix_by_default(tok):
    t = load("synthetic:n=6,in=80,out=8,prefix=20", tok)
    firsts = {tuple(tok.encode(r.messages[0]["content"], add_special_tokens=False)[:20]) for r in t.requests}
    assert len(firsts) == 1 and len({r.messages[0]["content"] for r in t.requests}) == 6


def test_synthetic_deterministic_by_seed(tok):
    spec = "synthetic:n=20,in=uniform(30,200),out=lognormal(20,0.5),prefix=10,prefixes=2"
    a, b = load(spec, tok, seed=5), load(spec, tok, seed=5)
    assert a.requests == b.requests
    c = load(spec, tok, seed=6)
    assert [r.messages for r in c.requests] != [r.messages for r in a.requests]
    assert load(spec + ",seed=5", tok, seed=99).requests == a.requests    # the spec's own seed wins
    # one generator drawn request by request: the first 7 of n=20 are n=7 and limit=7
    assert load(spec.replace("n=20", "n=7"), tok, seed=5).requests == a.requests[:7]
    assert load(spec, tok, seed=5, limit=7).requests == a.requests[:7]


# ---- bad input ---------------------------------------------------------------------------------

BAD_LINES = [
    ({"output_tokens": 5}, "line 2: give messages .* or prompt"),
    ({"messages": [], "output_tokens": 5}, "line 2: messages must be a non-empty list"),
    ({"messages": [{"role": "user"}]}, "line 2: message 0 must be an object with role and content strings"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "line 2: message 0 must be"),
    ({"prompt": ""}, "line 2: prompt must be a non-empty string"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "line 2: .*not both"),
    ({"prompt": "hi", "output_tokens": 0}, r"line 2: output_tokens must be at least 1 \(got 0\)"),
    ({"prompt": "hi", "output_tokens": -3}, r"line 2: output_tokens must be at least 1 \(got -3\)"),
    ({"prompt": "hi", "max_tokens": "12"}, "line 2: max_tokens must be a whole number"),
    ({"prompt": "hi", "output_tokens": 2.5}, "line 2: output_tokens must be a whole number"),
    ({"prompt": "hi", "output_tokens": True}, "line 2: output_tokens must be a whole number"),
    ({"prompt": "hi", "output_tokens": 4, "max_tokens": 4}, "line 2: give output_tokens or its alias max_tokens, not both"),
    ({"prompt": "hi", "output_tokns": 4}, "line 2: unknown field.* output_tokns"),
    ({"prompt": "hi", "session": 1.5}, "line 2: session must be a string or an integer"),
    ('{"prompt": "hi",', "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[m.split(": ", 1)[1][:40] for _, m in BAD_LINES])
def test_bad_jsonl_line_names_its_line(tok, tmp_path, line, message):
    path = write_jsonl(tmp_path / "requests.jsonl", [{"prompt": "fine", "output_tokens": 3}, line])
    with pytest.raises(TrafficError, match="requests.jsonl " + message):
        load(path, tok)


def test_timestamps_checked(tok, tmp_path):
    good = {"prompt": "hi", "timestamp": 5}
    for line, message in [({"prompt": "hi", "timestamp": 4.5}, r"line 2: timestamp 4.5 goes backwards"),
                          ({"prompt": "hi", "timestamp": -1}, "line 2: timestamp must be a number of seconds >= 0"),
                          ({"prompt": "hi", "timestamp": "soon"}, "line 2: timestamp must be a number"),
                          ({"prompt": "hi"}, "line 2: no timestamp, unlike line 1")]:
        with pytest.raises(TrafficError, match=message):
            load(write_jsonl(tmp_path / "t.jsonl", [good, line]), tok)
    with pytest.raises(TrafficError, match="line 2: a timestamp, unlike line 1"):
        load(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hi"}, good]), tok)


def test_longer_than_max_model_len(tok, tmp_path):
    rows = [{"prompt": "hi", "output_tokens": 4}, {"prompt": "the eggs " * 40, "output_tokens": 10}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    n = len(templated(tok, [{"role": "user", "content": rows[1]["prompt"]}]))
    assert load(path, tok, max_model_len=n + 10).requests[1].prompt_tokens == n     # exactly fits
    with pytest.raises(TrafficError, match=rf"long.jsonl line 2 \(request 1\): {n} prompt tokens \+ 10 output "
                                           rf"tokens exceed max_model_len {n + 9}"):
        load(path, tok, max_model_len=n + 9)
    # a request without its own length is checked with the run's --max-tokens
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": rows[1]["prompt"]}])
    with pytest.raises(TrafficError, match=rf"line 1 \(request 0\): {n} prompt tokens \+ 64 output tokens"):
        load(path, tok, max_model_len=n + 63)
    with pytest.raises(TrafficError, match=r"synthetic: in=100 \(100 tokens\) \+ out=30 \(30 tokens\) exceed "
                                           r"max_model_len 128"):
        load("synthetic:n=3,in=100,out=30", tok, max_model_len=128)


def test_empty_and_missing_files_and_unknown_specs(tok, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(TrafficError, match="empty.jsonl: no requests"):
        load(tmp_path / "empty.jsonl", tok)
    with pytest.raises(TrafficError, match="traffic file not found: .*nope.jsonl"):
        load(tmp_path / "nope.jsonl", tok)
    (tmp_path / "bytes.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(TrafficError, match="bytes.jsonl line 2: not UTF-8"):
        load(tmp_path / "bytes.jsonl", tok)
    (tmp_path / "data.csv").write_text("prompt\nhi\n")
    for spec in ("gsm8k", str(tmp_path / "data.csv"), "synthetics:in=3,out=4", "random"):
        with pytest.raises(TrafficError, match=r"unknown traffic .*expected a \.jsonl file .*ShareGPT.*synthetic:in="):
            load(spec, tok)
    (tmp_path / "obj.json").write_text('{"conversations": []}')
    with pytest.raises(TrafficError, match="obj.json: expected a list of ShareGPT entries"):
        load(tmp_path / "obj.json", tok)


@pytest.mark.parametrize("spec,message", [
    ("synthetic:in=100,out=10,size=3", "unknown key 'size' .*known: n, in, out, prefix, prefixes, seed"),
    ("synthetic:n=5,out=10", "in required"),
    ("synthetic:in=100", "out required"),
    ("synthetic:in=gauss(100,3),out=10", r"in=gauss\(100,3\) is not a distribution .*uniform\(a,b\)"),
    ("synthetic:in=uniform(100),out=10", "uniform takes 2 numbers"),
    ("synthetic:in=uniform(300,100),out=10", "needs a <= b"),
    ("synthetic:in=normal(100,-1),out=10", "spread must be >= 0"),
    ("synthetic:in=lognormal(0,1),out=10", "median must be > 0"),
    ("synthetic:in=100[50:20],out=10", "lo above hi"),
    ("synthetic:in=100,out=uniform(a,9)", "'a' is not a number"),
    ("synthetic:in=100,out=0", "out=0 must be at least 1"),
    ("synthetic:in=100,out=10,n=0", "n=0 must be at least 1"),
    ("synthetic:in=100,out=10,n=ten", "n=ten is not a whole number"),
    ("synthetic:in=100,out=10,in=20", "in given twice"),
    ("synthetic:in=100,out=10,prefixes=3", "prefixes=3 needs prefix"),
    ("synthetic:in=100,,out=10", "'' is not key=value"),
])
def test_bad_synthetic_spec(tok, spec, message):
    with pytest.raises(TrafficError, match=message):
        load(spec, tok)


def test_in_below_template_overhead(tok):
    o = overhead(tok)
    assert o > 5                                             # the tiny template's own tokens
    with pytest.raises(TrafficError, match=rf"synthetic: in={o}: the chat template alone takes {o} prompt tokens, "
                                           rf"so in must be at least {o + 1}"):
        load(f"synthetic:n=3,in={o},out=5", tok)
    with pytest.raises(TrafficError, match=rf"the chat template alone takes {o} prompt tokens and the prefix 20, "
                                           rf"so in must be at least {o + 20}"):
        load(f"synthetic:n=3,in={o + 10},out=5,prefix=20", tok)
    with pytest.raises(TrafficError, match=r"synthetic: in=uniform\(1,40\) can draw 1 token: the chat template alone takes \d+ prompt tokens, so in must be at least \d+ \(bound it"):
        load("synthetic:n=50,in=uniform(1,40),out=5", tok)


def test_records_frozen_and_consistent(tok):
    t = load("synthetic:n=2,in=40,out=3", tok)
    with pytest.raises(AttributeError):
        t.requests[0].prompt_tokens = 1
    with pytest.raises(ValueError, match="contradicts"):
        Traffic(name="x", requests=(TrafficRequest(index=0, messages=(), prompt_tokens=3),), fixed_output=True)
    with pytest.raises(TrafficError, match="limit must be at least 1"):
        load("synthetic:n=2,in=40,out=3", tok, limit=0)
