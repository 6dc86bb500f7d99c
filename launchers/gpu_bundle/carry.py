"""Carry a GPU session's pieces to a host without network, one fixed-size chunk per device call.

The device tool sends the checkout plus at most 64 MiB a call, the checkout included. `pack`
(here, where pip works) puts the pieces (engine bundles, GGUF, parquet, tokenizer, wheels) end to
end in the order they are needed and cuts that stream into chunks that each fit one call beside
the checkout: call-01/01.bin, call-02/02.bin, ... (call-01 also holds manifest.json). So no call
is half empty, every piece is carried exactly once, and a piece is usable as soon as the call that
carries its last byte has arrived. MANIFEST.md lists every piece with its bytes, sha256 and the
calls that carry it.

`join` (there, after each call) checks every chunk that arrived against the manifest (size and
sha256: a broken copy is named, to be carried again) and installs each piece whose bytes have all
arrived, in a background process, so the call returns at once: tar pieces are unpacked into their
folder, wheels installed with pip into DEST/site, files copied; DEST/have/NAME marks a piece ready.
Standard library only: the host's python3 runs it before anything else is installed.

    python3 launchers/gpu_bundle/carry.py pack --out .bundle-gpu/carry \\
        --piece parquet=file:data:/tmp/gsm8k_test.parquet --piece vllm=tar:bundle:/tmp/vllm.tar.xz
    python3 launchers/gpu_bundle/carry.py join .bundle-gpu/carry /tmp/gpu      # on the GPU host
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1024 * 1024
CALL_LIMIT_BYTES = 64 * MIB        # the device tool's limit per call: the checkout and carried paths together
MARGIN_BYTES = 3 * MIB             # room for the checkout to grow between `pack` and the session
KINDS = ("file", "tar", "wheel")
MANIFEST = "manifest.json"
CHUNK_READ = 8 * MIB


class CarryError(ValueError):
    """Bad input, or a chunk that is not what the manifest says: one line, exit code 2."""


@dataclass(frozen=True)
class Piece:
    name: str          # what the session waits for: DEST/have/NAME
    kind: str          # file (copied to DEST/TO/FILE_NAME) | tar (unpacked into DEST/TO) | wheel (pip --target DEST/TO)
    to: str            # folder under DEST
    file_name: str
    size_bytes: int
    sha256: str
    offset_bytes: int  # where it starts in the stream of all pieces


@dataclass(frozen=True)
class Chunk:
    call: int          # the device call that carries it, from 1
    size_bytes: int
    sha256: str

    @property
    def folder(self) -> str:
        return f"call-{self.call:02d}"

    @property
    def file_name(self) -> str:
        return f"{self.call:02d}.bin"


@dataclass(frozen=True)
class Manifest:
    chunk_bytes: int
    tree_bytes: int    # the checkout's size when packed
    pieces: tuple[Piece, ...]
    chunks: tuple[Chunk, ...]

    def calls_of(self, p: Piece) -> tuple[int, int]:
        first = p.offset_bytes // self.chunk_bytes + 1
        last = (p.offset_bytes + max(p.size_bytes, 1) - 1) // self.chunk_bytes + 1
        return first, last

    def to_json(self) -> str:
        return json.dumps({"chunk_bytes": self.chunk_bytes, "tree_bytes": self.tree_bytes,
                           "pieces": [asdict(p) for p in self.pieces],
                           "chunks": [asdict(c) for c in self.chunks]}, indent=1)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        d = json.loads(path.read_text())
        return cls(d["chunk_bytes"], d["tree_bytes"], tuple(Piece(**p) for p in d["pieces"]),
                   tuple(Chunk(**c) for c in d["chunks"]))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_READ):
            h.update(block)
    return h.hexdigest()


def tree_bytes(repo: Path) -> int:
    """What the device tool sends besides the carried paths: tracked and untracked, not ignored, files."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    total = 0
    for name in out.split(b"\0"):
        if name:
            p = repo / os.fsdecode(name)
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def parse_piece(spec: str) -> tuple[str, str, str, Path]:
    try:
        name, rest = spec.split("=", 1)
        kind, to, path = rest.split(":", 2)
    except ValueError:
        raise CarryError(f"--piece {spec!r}: expected NAME=KIND:TO:PATH, e.g. vllm=tar:bundle:/tmp/vllm.tar.xz") from None
    if kind not in KINDS:
        raise CarryError(f"--piece {spec!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise CarryError(f"--piece {spec!r}: name {name!r} must be letters, digits, - and _")
    if to.startswith("/") or ".." in Path(to).parts:
        raise CarryError(f"--piece {spec!r}: TO must be a folder inside the destination, not {to!r}")
    p = Path(path)
    if not p.is_file():
        raise CarryError(f"--piece {spec!r}: no file {path}")
    return name, kind, to, p


def pack(specs: list[str], out: Path, chunk_bytes: int, tree: int) -> Manifest:
    """Write out/call-NN/NN.bin chunks of the concatenated pieces, manifest.json into call-01, and
    MANIFEST.md beside them."""
    parsed = [parse_piece(s) for s in specs]
    names = [n for n, *_ in parsed]
    if len(set(names)) != len(names):
        raise CarryError(f"piece names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if tree + chunk_bytes > CALL_LIMIT_BYTES:
        raise CarryError(f"chunks of {chunk_bytes / MIB:.1f} MiB beside a checkout of {tree / MIB:.1f} MiB exceed "
                         f"the {CALL_LIMIT_BYTES // MIB} MiB a call carries")
    for old in out.glob("call-*"):
        shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    pieces, chunks = [], []
    offset, call, filled, h, f = 0, 0, chunk_bytes, None, None

    def close_chunk():
        if f is not None:
            f.close()
            chunks.append(Chunk(call, filled, h.hexdigest()))

    for name, kind, to, path in parsed:
        ph = hashlib.sha256()
        size = path.stat().st_size
        with path.open("rb") as src:
            left = size
            while left:
                if filled == chunk_bytes:
                    close_chunk()
                    call += 1
                    folder = out / f"call-{call:02d}"
                    folder.mkdir()
                    f, h, filled = (folder / f"{call:02d}.bin").open("wb"), hashlib.sha256(), 0
                block = src.read(min(CHUNK_READ, left, chunk_bytes - filled))
                ph.update(block)
                h.update(block)
                f.write(block)
                filled += len(block)
                left -= len(block)
        pieces.append(Piece(name, kind, to, path.name, size, ph.hexdigest(), offset))
        offset += size
    close_chunk()
    m = Manifest(chunk_bytes, tree, tuple(pieces), tuple(chunks))
    (out / "call-01" / MANIFEST).write_text(m.to_json())
    (out / "MANIFEST.md").write_text(manifest_markdown(m))
    return m


def manifest_markdown(m: Manifest) -> str:
    lines = [f"# Carried pieces: {len(m.pieces)} pieces in {len(m.chunks)} calls",
             "",
             f"Chunks of {m.chunk_bytes / MIB:.1f} MiB beside a checkout of {m.tree_bytes / MIB:.2f} MiB when packed "
             f"(a call carries {CALL_LIMIT_BYTES // MIB} MiB with the checkout). Call N carries "
             f"`.bundle-gpu/carry/call-NN`; call 1 also holds manifest.json.",
             "",
             "| piece | kind | to | file | MiB | sha256 | calls |",
             "|---|---|---|---|---:|---|---|"]
    for p in m.pieces:
        a, b = m.calls_of(p)
        lines.append(f"| {p.name} | {p.kind} | {p.to} | {p.file_name} | {p.size_bytes / MIB:.2f} | `{p.sha256}` | "
                     f"{a}{'' if a == b else f'–{b}'} |")
    lines += ["", "| call | carries | chunk MiB | sha256 |", "|---:|---|---:|---|"]
    for c in m.chunks:
        names = [p.name for p in m.pieces if m.calls_of(p)[0] <= c.call <= m.calls_of(p)[1]]
        lines.append(f"| {c.call} | {', '.join(names)} | {c.size_bytes / MIB:.2f} | `{c.sha256}` |")
    return "\n".join(lines) + "\n"


# ---- on the host ----------------------------------------------------------------------------------

def find_manifest(carry: Path) -> Manifest:
    path = carry / "call-01" / MANIFEST
    if not path.is_file():
        raise CarryError(f"no {path}: call 1 carries it, with the first chunk")
    return Manifest.read(path)


def verify_chunks(m: Manifest, carry: Path, state: Path) -> tuple[set[int], list[str]]:
    """Chunks that arrived whole (each checked once, then remembered), and what is wrong with others."""
    ok_dir = state / "chunks-ok"
    ok_dir.mkdir(parents=True, exist_ok=True)
    ok, problems = set(), []
    for c in m.chunks:
        path = carry / c.folder / c.file_name
        if (ok_dir / str(c.call)).exists() and path.is_file():
            ok.add(c.call)
            continue
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size != c.size_bytes:
            problems.append(f"call {c.call}: {path} has {size} bytes, not {c.size_bytes}: carry it again")
        elif sha256_file(path) != c.sha256:
            problems.append(f"call {c.call}: {path} has the wrong sha256: carry it again")
        else:
            (ok_dir / str(c.call)).touch()
            ok.add(c.call)
    return ok, problems


class PieceReader(io.RawIOBase):
    """One piece's bytes read straight out of the chunk files that hold them."""

    def __init__(self, m: Manifest, carry: Path, p: Piece):
        self.m, self.carry, self.pos, self.end = m, carry, p.offset_bytes, p.offset_bytes + p.size_bytes
        self.f, self.open_call = None, None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pos >= self.end:
            return 0
        call, at = self.pos // self.m.chunk_bytes + 1, self.pos % self.m.chunk_bytes
        if call != self.open_call:
            if self.f:
                self.f.close()
            c = self.m.chunks[call - 1]
            self.f, self.open_call = (self.carry / c.folder / c.file_name).open("rb"), call
        self.f.seek(at)
        n = self.f.readinto(memoryview(buf)[:min(len(buf), self.end - self.pos, self.m.chunk_bytes - at)])
        self.pos += n
        return n

    def close(self) -> None:
        if self.f:
            self.f.close()
        super().close()


class Hashing(io.RawIOBase):
    def __init__(self, raw):
        self.raw, self.h = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.raw.readinto(buf)
        self.h.update(memoryview(buf)[:n])
        return n


def install_piece(m: Manifest, carry: Path, dest: Path, p: Piece) -> None:
    target = dest / p.to
    target.mkdir(parents=True, exist_ok=True)
    src = Hashing(PieceReader(m, carry, p))
    stream = io.BufferedReader(src, CHUNK_READ)
    if p.kind == "tar":
        # streamed: nothing of the archive is written twice; filter="data" refuses links out of target
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            tf.extractall(target, filter="data")
        while stream.read(CHUNK_READ):      # tar's end padding, so the sha256 covers every byte
            pass
    else:
        out = target / p.file_name if p.kind == "file" else dest / "wheels" / p.file_name
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            shutil.copyfileobj(stream, f, CHUNK_READ)
    if src.h.hexdigest() != p.sha256:
        raise CarryError(f"{p.name}: sha256 of the joined bytes is not the manifest's")
    if p.kind == "wheel":
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--disable-pip-version-check", "--target", str(target), str(out)], check=True)


def install_ready(carry: Path, dest: Path) -> None:
    """Install, in manifest order, every piece whose chunks all arrived and that is not installed
    yet. One installer at a time (a lock); a later join's installer picks up what this one left."""
    state = dest / ".carry"
    state.mkdir(parents=True, exist_ok=True)
    with (state / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        m = find_manifest(carry)
        ok, _ = verify_chunks(m, carry, state)
        have = dest / "have"
        have.mkdir(exist_ok=True)
        for p in m.pieces:
            first, last = m.calls_of(p)
            if (have / p.name).exists() or not all(c in ok for c in range(first, last + 1)):
                continue
            t0 = time.time()
            print(f"{time.strftime('%T')} installing {p.name} ({p.size_bytes / MIB:.1f} MiB, {p.kind} -> {dest / p.to})",
                  flush=True)
            install_piece(m, carry, dest, p)
            (have / p.name).write_text(f"{time.time() - t0:.1f} s\n")
            print(f"{time.strftime('%T')} have {p.name} in {time.time() - t0:.1f} s", flush=True)


def join(carry: Path, dest: Path, wait: bool) -> int:
    m = find_manifest(carry)
    state = dest / ".carry"
    state.mkdir(parents=True, exist_ok=True)
    ok, problems = verify_chunks(m, carry, state)
    for line in problems:
        print(f"BAD {line}")
    have = dest / "have"
    ready = [p for p in m.pieces if all(c in ok for c in range(m.calls_of(p)[0], m.calls_of(p)[1] + 1))]
    todo = [p.name for p in ready if not (have / p.name).exists()]
    missing = [c.call for c in m.chunks if c.call not in ok]
    print(f"chunks {len(ok)}/{len(m.chunks)} here" + (f", next: call {missing[0]}" if missing else ", all here"))
    print("ready: " + (", ".join(p.name for p in ready) or "nothing yet") + "; installing now: " + (", ".join(todo) or "nothing"))
    if todo:
        cmd = [sys.executable, os.path.abspath(__file__), "install", str(carry), str(dest)]
        if wait:
            subprocess.run(cmd, check=True)
        else:
            with (state / "install.log").open("a") as log:
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carry.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="here: cut the pieces into one chunk per call, with the manifest")
    a.add_argument("--out", type=Path, required=True, help="folder for call-NN/ and MANIFEST.md (emptied of call-* first)")
    a.add_argument("--piece", action="append", default=[], metavar="NAME=KIND:TO:PATH",
                   help="in the order needed; KIND file|tar|wheel; TO a folder under the host's destination")
    a.add_argument("--chunk-mib", default="auto",
                   help="chunk size in MiB; auto = 64 MiB - the checkout (--repo) - 3 MiB of margin, rounded down")
    a.add_argument("--repo", type=Path, default=Path("."), help="the checkout the device tool sends, for auto")
    j = sub.add_parser("join", help="there: check the chunks that arrived and install complete pieces in the background")
    j.add_argument("carry", type=Path)
    j.add_argument("dest", type=Path)
    j.add_argument("--wait", action="store_true", help="install in the foreground")
    i = sub.add_parser("install", help="(started by join) install every complete piece")
    i.add_argument("carry", type=Path)
    i.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            if not args.piece:
                ap.error("pack needs at least one --piece")
            tree = tree_bytes(args.repo)
            if args.chunk_mib == "auto":
                chunk = (CALL_LIMIT_BYTES - tree - MARGIN_BYTES) // MIB * MIB
                if chunk < MIB:
                    raise CarryError(f"the checkout ({tree / MIB:.1f} MiB) leaves no room for chunks in a "
                                     f"{CALL_LIMIT_BYTES // MIB} MiB call")
            else:
                try:
                    chunk = int(float(args.chunk_mib) * MIB)
                except ValueError:
                    chunk = 0
                if chunk <= 0:
                    ap.error(f"--chunk-mib {args.chunk_mib!r}: a positive number of MiB, or auto")
            m = pack(args.piece, args.out, chunk, tree)
            print((args.out / "MANIFEST.md").read_text())
            return 0
        if args.cmd == "join":
            return join(args.carry, args.dest, args.wait)
        install_ready(args.carry, args.dest)
        return 0
    except CarryError as e:
        print(f"carry.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
