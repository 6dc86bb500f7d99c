"""The GPU session's carrying (launchers/gpu_bundle/carry.py) and its script's plan
(launchers/gpu_session.sh), with real files: an xz tarball, a wheel pip installs, a binary file,
cut into chunks and joined back as on the host, call by call."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "launchers" / "gpu_bundle" / "carry.py"
SESSION = ROOT / "launchers" / "gpu_session.sh"
MIB = 1024 * 1024


def carry(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CARRY), *map(str, args)], capture_output=True, text=True, **kw)


def make_wheel(folder: Path) -> Path:
    """A minimal real wheel (one module, its dist-info), as pip writes and reads them."""
    name = "carrytest"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},,\n" for p in files) + f"{name}-1.0.dist-info/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return path


@pytest.fixture
def pieces(tmp_path):
    src = tmp_path / "src"
    (src / "tok").mkdir(parents=True)
    (src / "tok" / "tokenizer.json").write_bytes(os.urandom(300_000))    # incompressible: the tar spans chunks
    with tarfile.open(src / "tok.tar.xz", "w:xz") as tf:
        tf.add(src / "tok", arcname="tok")
    (src / "blob.bin").write_bytes(os.urandom(int(2.5 * MIB)))
    wheel = make_wheel(src)
    specs = [f"tok=tar:.:{src / 'tok.tar.xz'}", f"wheel=wheel:site:{wheel}", f"blob=file:cache:{src / 'blob.bin'}"]
    return src, specs


def pack(tmp_path, specs, chunk_mib="0.5"):
    out = tmp_path / "carry"
    r = carry("pack", "--out", out, "--repo", ROOT, "--chunk-mib", chunk_mib, *[a for s in specs for a in ("--piece", s)])
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "call-01" / "manifest.json").read_text())


def test_pieces_arrive_call_by_call_and_are_installed_once_whole(tmp_path, pieces):
    """A piece is installed only when every chunk holding its bytes has arrived, and then exactly
    as packed: the tarball unpacked, the wheel importable with its dist-info, the file identical."""
    src, specs = pieces
    out, m = pack(tmp_path, specs)
    calls = sorted(out.glob("call-*"))
    assert len(calls) == len(m["chunks"]) == 6        # 0.3 + ~0 + 2.5 MiB in chunks of 0.5 MiB
    assert all(c["size_bytes"] <= MIB // 2 for c in m["chunks"])
    text = (out / "MANIFEST.md").read_text()
    for p in m["pieces"]:
        assert p["sha256"] in text
    # The host: only the calls made so far are in its copy of the carry folder.
    host, dest = tmp_path / "host", tmp_path / "dest"
    host.mkdir()
    for n, call in enumerate(calls, 1):
        os.symlink(call, host / call.name)
        r = carry("join", host, dest, "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        have = sorted(p.name for p in (dest / "have").glob("*")) if (dest / "have").exists() else []
        expect = ["tok", "wheel"] if n < 6 else ["blob", "tok", "wheel"]    # tok and wheel fit in call 1
        assert have == sorted(expect), (n, have, r.stdout)
    assert (dest / "tok" / "tokenizer.json").read_bytes() == (src / "tok" / "tokenizer.json").read_bytes()
    assert hashlib.sha256((dest / "cache" / "blob.bin").read_bytes()).digest() == \
        hashlib.sha256((src / "blob.bin").read_bytes()).digest()
    r = subprocess.run([sys.executable, "-c", "import carrytest, importlib.metadata as m; "
                        "print(carrytest.VALUE, m.version('carrytest'))"],
                       env={**os.environ, "PYTHONPATH": str(dest / "site")}, capture_output=True, text=True)
    assert r.stdout.split() == ["42", "1.0"], r.stderr
    # A later join installs nothing twice.
    r = carry("join", host, dest, "--wait")
    assert "installing now: nothing" in r.stdout


def test_a_broken_chunk_is_named_and_its_piece_is_not_installed(tmp_path, pieces):
    _, specs = pieces
    out, m = pack(tmp_path, specs)
    bad = out / "call-04" / "04.bin"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    r = carry("join", out, dest, "--wait")
    assert r.returncode == 1
    assert re.search(r"call 4: .* wrong sha256: carry it again", r.stdout), r.stdout
    assert (dest / "have" / "tok").exists() and not (dest / "have" / "blob").exists()
    # The same chunk carried again, whole: the piece follows.
    bad.write_bytes(bytes(data[:100]) + bytes([data[100] ^ 0xFF]) + bytes(data[101:]))
    r = carry("join", out, dest, "--wait")
    assert r.returncode == 0 and (dest / "have" / "blob").exists(), r.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, pieces):
    _, specs = pieces
    # a chunk that cannot travel beside the checkout in one 64 MiB call
    r = carry("pack", "--out", tmp_path / "c", "--repo", ROOT, "--chunk-mib", "63.5", "--piece", specs[0])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "exceed the 64 MiB" in r.stderr
    r = carry("pack", "--out", tmp_path / "c", "--repo", ROOT, "--piece", "vllm=zip:bundle:/nonexistent")
    assert r.returncode == 2 and "kind 'zip'" in r.stderr
    r = carry("pack", "--out", tmp_path / "c", "--repo", ROOT, "--piece", f"x=file:../up:{specs[0].split(':')[-1]}")
    assert r.returncode == 2 and "inside the destination" in r.stderr
    r = carry("join", tmp_path / "nothing", tmp_path / "dest")
    assert r.returncode == 2 and "call 1 carries it" in r.stderr


def test_auto_chunks_fit_one_call_beside_this_checkout(tmp_path, pieces):
    _, specs = pieces
    out, m = pack(tmp_path, specs, chunk_mib="auto")
    assert m["chunk_bytes"] + m["tree_bytes"] <= 64 * MIB - 3 * MIB


def session(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SESSION), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})


def test_each_engine_runs_on_its_own_path_and_every_step_has_its_pieces(tmp_path):
    """The vLLM and SGLang bundles pin different transformers/xgrammar/openai: a step that runs
    one engine must run on that engine's PYTHONPATH, and wait for that engine's bundle."""
    steps = session("steps")
    assert steps.returncode == 0, steps.stderr
    needs = dict(line.split(None, 2)[::2] for line in steps.stdout.splitlines())
    dry = session("dry")
    assert dry.returncode == 0, dry.stderr
    step, seen = None, set()
    for line in dry.stdout.splitlines():
        if line.startswith("# "):
            step = line[2:]
            continue
        path, cmd = line.split(" ", 1)
        engines = set(re.findall(r"--engines? (\w+)", cmd))
        assert engines <= {path, "hf"}, (step, line)
        assert path in needs[step].split(), (step, needs[step])
        seen.add(step)
    assert seen == set(needs), set(needs) - seen
    r = session("start", "no-such-step", GPU_SESSION_TMP=str(tmp_path / "s"), GPU_SESSION_RESULTS=str(tmp_path / "r"))
    assert r.returncode == 2 and "no step no-such-step" in r.stderr
