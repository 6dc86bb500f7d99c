"""Every command in README.md and docs/*.md still runs: the shell commands of their code blocks
(fenced ``` blocks, and 4-space indented blocks) that start with `python -m`, `make`, `launchers/`,
`bash`, `pip install` or `sbatch`, and the `python -m` commands of the README's tables, are checked
without an engine:

- `python -m MODULE ...` of this project: the module exists, and every `--flag` is one its own
  argparse parser defines (exactly: no abbreviations), subcommands included; flags after `--` of a
  command that passes them to its runs (evaluator.compare, launchers.sweep, evaluator.profile,
  evaluator.bench.client) are checked against the evaluator's parser. A command without
  placeholders (`M`, `PATH`, `<run-id>`, `...`, `[--flag]`) is also parsed whole, values included.
  `python -m evaluator.compare` commands are dry-run on the tests' tiny model with a real model's
  context, 1319 problems and a request log of the tests' own (their `--model`, `--data` and
  `--traffic FILE.jsonl` replaced, `--device cpu` added), unless they need a file the tests do not
  have (a profile, a GGUF, a comparison folder to resume).
- `make TARGET`: the Makefile has the target; `pip install '.[EXTRA]'`: pyproject has the extra.
- `launchers/...`, `bash FILE`, `sbatch ... FILE`: the file exists (executable where run directly);
  a `launchers/gpu_session.sh` subcommand is one the script handles; `launchers/demo.sh
  --print-settings` is run.
- `python -m pytest PATH...`: the paths exist.
- Every relative link between the pages resolves, anchors included.

    python -m pytest tests/test_docs.py -q
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from evaluator.cli import RaisingParser, build_parser as evaluator_parser, split_passthrough
from evaluator.errors import UsageError
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("evaluator", "launchers", "datasets_prep", "tests")
# commands whose flags after `--` are evaluator flags, given to every run they start
PASSES_ON = {"evaluator.compare", "launchers.sweep", "evaluator.profile", "evaluator.bench.client"}
STARTS = ("python", "python3", ".venv/bin/python", "make", "bash", "pip", "sbatch", "launchers/", "./launchers/")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|<|>|\.\.\.|^\[|\]$|\|")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        while words and ENV.match(words[0]):
            words = words[1:]
        return words

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every code block: fenced, or indented by 4 spaces after a
    blank line (outside a fence)."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out.append((i + 2, lines[i + 1:j]))
            i = j + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            out.append((i + 1, [line[4:] for line in lines[i:j]]))
            i = j
        else:
            i += 1
    return out


def commands_in(path: Path, text: str | None = None) -> list[Command]:
    text = path.read_text() if text is None else text
    found = []
    for first, body in blocks(text):
        k = 0
        while k < len(body):
            start, line = k, body[k]
            while line.rstrip().endswith("\\") and k + 1 < len(body):
                k += 1
                line = line.rstrip()[:-1] + " " + body[k].strip()
            k += 1
            for part in re.split(r"\s(?:&&|;)\s", line.strip()):
                words = part.split()
                while words and ENV.match(words[0]):
                    words = words[1:]
                # (a file tree's `launchers/` is a folder, not a command)
                if words and words[0].startswith(STARTS) and not words[0].endswith((":", "/")):
                    found.append(Command(path.name, first + start, part.strip()))
    if path.name == "README.md":   # the table "which command for which question"
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("|"):
                found += [Command(path.name, n, c) for c in re.findall(r"`(python -m [^`]+)`", line)]
    return found


ALL = [c for doc in DOCS for c in commands_in(doc)]


def module_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """('evaluator.compare', its args) of `python -m evaluator.compare ...`."""
    if len(argv) >= 3 and Path(argv[0]).name in ("python", "python3") and argv[1] == "-m":
        return argv[2], argv[3:]
    return None


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str) -> argparse.ArgumentParser | None:
    """The module's own argparse parser: its build_parser(), else the one its main() builds (caught
    as it parses, before main does anything); None for a module that takes no flags."""
    if module == "evaluator":
        return evaluator_parser(RaisingParser)
    spec = importlib.util.find_spec(module)
    name = f"{module}.__main__" if spec.submodule_search_locations else module
    mod = importlib.import_module(name)
    if hasattr(mod, "build_parser"):
        return mod.build_parser()
    source = Path(mod.__file__).read_text()
    if "ArgumentParser(" not in source:
        return None

    def caught(self, *a, **k):
        raise _Parsed(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_known_args", caught)
        try:
            mod.main(["--help"])
        except _Parsed as p:
            return p.parser
    raise AssertionError(f"{module}: main() parsed no flags")


def options(parser: argparse.ArgumentParser, args: list[str]) -> set[str]:
    """Every option string of the parser, and of the subcommand the args name."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((a for a in args if a in action.choices), None)
            if chosen:
                found |= options(action.choices[chosen], args[args.index(chosen) + 1:])
    return found


def flags(args: list[str]) -> list[str]:
    """The `--flag`s of some arguments (`[--flag]` too); a quoted value such as
    `--sbatch-args "--partition gpu"` is a value, not a flag."""
    return [a.strip("[]").split("=")[0] for a in args
            if a.strip("[").startswith("--") and a.strip("[]") != "--" and " " not in a]


def unknown_flags(module: str, args: list[str]) -> list[str]:
    """The flags of a `python -m module args` command that its parser(s) do not define."""
    own, passed = split_passthrough(args) if module in PASSES_ON else (args, [])
    parser = parser_of(module)
    known = options(parser, own) if parser else set()
    bad = [f for f in flags(own) if f not in known]
    if passed:
        bad += [f"{f} (after --)" for f in flags(passed) if f not in evaluator_parser()._option_string_actions]
    return bad


def parse_error(module: str, args: list[str]) -> str | None:
    """The parser's complaint about a command without placeholders, values included; None if none."""
    if any(PLACEHOLDER.search(a) for a in args):
        return None
    own, passed = split_passthrough(args) if module in PASSES_ON else (args, [])
    try:
        if passed:
            evaluator_parser(RaisingParser).parse_args(passed)
        parser = parser_of(module)
        if parser is not None:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    parser.parse_args(own)
                except SystemExit as e:
                    if e.code:
                        return err.getvalue().strip().splitlines()[-1]
    except UsageError as e:
        return str(e)
    return None


def problems(cmd: Command) -> list[str]:
    """What is wrong with one documented command ([] when it runs as written)."""
    argv = cmd.argv
    found = module_of(argv)
    if found:
        module, args = found
        if module == "pytest":
            paths = [a for a in args if a.startswith("tests/")]
            return [f"no such path {a}" for a in paths if not (ROOT / a.split("::")[0]).exists()]
        if not module.startswith(OURS):
            return []
        try:
            if importlib.util.find_spec(module) is None:
                return [f"no module {module}"]
        except ModuleNotFoundError:
            return [f"no module {module}"]
        bad = unknown_flags(module, args)
        if bad:
            return [f"{module} has no flag {', '.join(bad)}"]
        error = parse_error(module, args)
        return [f"{module} refuses it: {error}"] if error else []
    head = argv[0]
    if head == "make":
        targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
        return [f"the Makefile has no target {t}" for t in argv[1:] if not ENV.match(t) and t not in targets]
    if head == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        wanted = [e for a in argv if a.startswith(".[") for e in a[2:-1].split(",")]
        return [f"pyproject.toml has no extra {e}" for e in wanted if e not in extras]
    if head in ("bash", "sbatch"):
        scripts = [a for a in argv[1:] if a.endswith((".sh", ".sbatch"))]
        missing = [f"no such file {s}" for s in scripts if not (ROOT / s).is_file()]
        if head == "sbatch" and scripts and not missing:
            rest = argv[argv.index(scripts[0]) + 1:]
            known = evaluator_parser()._option_string_actions
            missing += [f"the evaluator has no flag {f}" for f in flags(rest) if f not in known]
        return missing or ([] if scripts else [f"no script in {cmd.text}"])
    script = ROOT / head.removeprefix("./")
    if not script.is_file():
        return [f"no such file {head}"]
    if not script.stat().st_mode & 0o111:
        return [f"{head} is not executable"]
    if script.name == "gpu_session.sh" and len(argv) > 1:
        handled = re.findall(r"^\s+([\w|-]+)\)", script.read_text(), re.M)
        if not any(argv[1] in h.split("|") for h in handled):
            return [f"{head} has no subcommand {argv[1]}"]
    if script.name == "demo.sh" and argv[1:] == ["--print-settings"]:
        r = subprocess.run(cmd.text, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=30)
        if r.returncode or "DTYPE=" not in r.stdout:
            return [f"exit {r.returncode}: {r.stderr.strip()}"]
    return []


def test_every_page_is_searched_and_has_its_commands():
    """The extraction finds what the pages hold: a page whose commands all vanished would pass
    every check below without checking anything."""
    by_doc = {}
    for c in ALL:
        by_doc.setdefault(c.doc, []).append(c.argv[:3])
    assert len(ALL) > 60, len(ALL)
    for doc in ("README.md", "serving.md", "layouts.md", "predict.md", "install.md", "demo.md", "slurm.md"):
        assert doc in by_doc, f"no command found in {doc}"
    assert ["make", "test"] in by_doc["README.md"], "the README's test command is `make test`"


@pytest.mark.parametrize("cmd", ALL, ids=[f"{c.doc}:{c.line}" for c in ALL])
def test_documented_command_runs(cmd: Command):
    found = problems(cmd)
    assert not found, f"{cmd}\n  " + "\n  ".join(found)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_resolves():
    """Relative links of README.md and docs/ (inline `[text](path#anchor)` and reference
    `[name]: path`) name a file that exists, and a heading there when they name an anchor."""
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]:\s+(\S+)", text, re.M)
        for target in targets:
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in {
                    slug(h) for h in re.findall(r"^#+\s+(.+)$", file.read_text(), re.M)}:
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_a_misspelled_flag_or_module_is_caught(tmp_path):
    """The checker itself: a page with a misspelled flag, a flag after -- that no run takes, a
    module that does not exist and a make target that does not, is refused on each."""
    page = tmp_path / "page.md"
    page.write_text("Text.\n\n```bash\n"
                    "python -m evaluator.compare --engines vllm --workload serve \\\n"
                    "    -- --concurency 1,16   # misspelled\n"
                    "python -m evaluator --engine vllm --level-prompt 8x\n"
                    "python -m evaluator.reports results/\n"
                    "make demos\n```\n\n"
                    "    python -m evaluator.report results/ --htlm\n")
    found = {c.text.split()[2] if c.text.startswith("python") else c.text: problems(c) for c in commands_in(page)}
    assert found == {
        "evaluator.compare": ["evaluator.compare has no flag --concurency (after --)"],
        "evaluator": ["evaluator has no flag --level-prompt"],
        "evaluator.reports": ["no module evaluator.reports"],
        "make demos": ["the Makefile has no target demos"],
        "evaluator.report": ["evaluator.report has no flag --htlm"],
    }


def test_a_wrong_value_is_caught():
    cmd = Command("page.md", 1, "python -m evaluator --engine vllm --workload batch")
    [problem] = problems(cmd)
    assert problem.startswith("evaluator refuses it: argument --workload: invalid choice: 'batch'"), problem


COMPARE = [c for c in ALL if (module_of(c.argv) or ("",))[0] == "evaluator.compare"]
# a dry run needs every file it names; these are not in the tests' reach
NEEDS_FILES = ("--resume", "--profile", ".gguf", ".json ")


@pytest.fixture(scope="module")
def docs_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a real model's context (32768, Qwen2.5's): a dry run reads its config and
    tokenizer, never its weights, and the documented shapes (2,000-token prompts) must fit."""
    out = tmp_path_factory.mktemp("docs") / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32768}))
    return out


@pytest.fixture(scope="module")
def docs_data(tmp_path_factory) -> Path:
    """A GSM8K-shaped parquet of 1319 problems, as many as the real test split: the documented load
    levels plan their fresh requests against that count."""
    from tests.conftest import run_cli
    folder = tmp_path_factory.mktemp("docs")
    rows = [{"question": f"Problem {i}: Tom has {i} apples and buys {i + 3} more. How many?",
             "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"} for i in range(1319)]
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli(["-m", "datasets_prep", "gsm8k", "--source", str(folder / "gsm8k.jsonl"),
                 "--out", str(folder / "gsm8k.parquet")], lock=False)
    assert r.returncode == 0, r.stderr
    return folder / "gsm8k.parquet"


@pytest.fixture(scope="module")
def docs_log(tmp_path_factory) -> Path:
    """A request log as the docs describe one (docs/serving.md, Traffic): prompts, output lengths
    and arrival times."""
    path = tmp_path_factory.mktemp("docs") / "log.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} + {i}?", "output_tokens": 16,
                                        "timestamp": round(i * 0.05, 2)}) + "\n" for i in range(2000)))
    return path


@pytest.mark.parametrize("cmd", COMPARE, ids=[f"{c.doc}:{c.line}" for c in COMPARE])
def test_documented_comparison_plans(cmd: Command, docs_model, docs_data, docs_log, capsys):
    """The comparison as documented, on the tiny model (and a request log of the tests' own where it
    names one): it plans without an error (an engine that is not installed here is a skipped
    layout, not an error)."""
    from evaluator import compare
    own, passed = split_passthrough(module_of(cmd.argv)[1])
    for flag, value in (("--model", str(docs_model)), ("--data", str(docs_data))):
        if flag in own:
            own[own.index(flag) + 1] = value
        else:
            own += [flag, value]
    if "--traffic" in passed and passed[passed.index("--traffic") + 1].endswith(".jsonl"):
        passed[passed.index("--traffic") + 1] = str(docs_log)
    if any(f in cmd.text + " " for f in NEEDS_FILES) or any(PLACEHOLDER.search(a) for a in own + passed):
        pytest.skip("names a file the tests do not have, or a placeholder")
    if "--predict" in own or "--measure-top" in own:
        pytest.skip("a dry run of a prediction needs a stored profile")
    own += [] if "--dry-run" in own else ["--dry-run"]
    passed += [] if "--device" in passed else ["--device", "cpu"]
    rc = compare.main([*own, "--", *passed])
    err = capsys.readouterr().err
    assert rc == 0, f"{cmd}\n{err}"
    assert "run  " in err, err
