"""The README is the front door and the docs/ pages are reachable and runnable (issue 17).

* README.md is at most 300 lines;
* every ``docs/*.md`` page is linked from README.md, and every relative link in README.md and
  docs/ points at a file (or folder) that exists;
* every command shown in README.md or docs/ (``python <script>.py ...``, ``python -m <module>
  ...``, ``torchrun ... <script>.py``, ``bash scripts/<name>.sh``), in fenced code blocks and in
  inline code, runs: each distinct script or module of this repository answers ``--help`` with
  exit status 0; bash scripts exist and parse (``bash -n``); modules from other packages
  (``python -m pip``) are importable.

The ``--help`` runs are separate processes forked from one driver that has imported the heavy
third-party packages (torch, timm, ...) once: each child gets the interpreter state a fresh
``python script.py --help`` would have (``sys.argv``, ``sys.path[0]``, ``__main__``), without
paying the ~5-15 s torch + timm import per script on a small machine.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300
#: Wall-clock limit of one ``--help`` run inside the driver (seconds).
HELP_TIMEOUT = 120
#: How many ``--help`` children run at once.
PARALLEL = 4


def doc_files() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


# ---- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


def strip_fences(text: str) -> str:
    """Text with fenced code blocks blanked out (their lines kept, so line numbers stay)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every relative Markdown link outside code blocks, anchors removed."""
    text = strip_fences(path.read_text(encoding="utf-8"))
    out = []
    for m in _LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, https:, mailto:, in-page anchors
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, target.split("#", 1)[0]))
    return out


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


def test_every_docs_page_is_linked_from_readme():
    linked = {(README.parent / t).resolve() for _, t in relative_links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no page"
    missing = [p.relative_to(ROOT).as_posix() for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_relative_links_resolve():
    broken = []
    for doc in doc_files():
        for line, target in relative_links(doc):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}:{line}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


# ---- module paths and names --------------------------------------------------------------------

#: ``path/to/file.py`` (a file of this repository, or a bare file name found in it)
_PY_PATH = re.compile(r"(?<![\w/.<-])((?:[\w.-]+/)*[\w-]+\.py)\b")
#: ``package.module.name`` of this repository's top-level modules and packages
_DOTTED = re.compile(
    r"(?<![\w./-])((?:util|evaluation|downstream_tasks|benchmarks|models_\w+|engine_\w+|main_\w+"
    r"|finetune_args|predict)(?:\.\w+)+)"
)


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _repo_file_names() -> set[str]:
    """Names of this repository's ``.py`` files (hidden folders and virtual environments skipped)."""
    names: set[str] = set()
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and not (here / d / "pyvenv.cfg").exists()
        ]
        names.update(f for f in files if f.endswith(".py"))
    return names


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (read with ast, nothing imported)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _defined(module: str, path: Path, name: str) -> bool:
    if name in _top_level_names(path) or _module_file(f"{module}.{name}"):
        return True
    # names a module sets at import time (e.g. the timm-registered factories): import it
    sys.path.insert(0, str(ROOT))
    try:
        return hasattr(importlib.import_module(module), name)
    finally:
        sys.path.remove(str(ROOT))


def test_named_files_modules_and_functions_exist():
    """Every ``file.py`` and ``package.module.function`` of ours named in README.md or docs/
    exists (a moved function or a renamed module leaves no stale name behind)."""
    stale, file_names = [], _repo_file_names()
    for doc in doc_files():
        for no, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{no}"
            for m in _PY_PATH.finditer(line):
                path = m.group(1)
                if not ((ROOT / path).exists() if "/" in path else path in file_names):
                    stale.append(f"{where}: {path}: no such file")
            for m in _DOTTED.finditer(line):
                parts = m.group(1).split(".")
                if parts[-1] == "py":
                    continue
                end = next(
                    (e for e in range(len(parts), 0, -1) if _module_file(".".join(parts[:e]))), 0
                )
                if not end:
                    stale.append(f"{where}: {m.group(1)}: no such module")
                elif end < len(parts):
                    module = ".".join(parts[:end])
                    if not _defined(module, _module_file(module), parts[end]):
                        stale.append(f"{where}: {m.group(1)}: {module} has no {parts[end]}")
    assert not stale, "stale names in the docs:\n" + "\n".join(stale)


# ---- commands ----------------------------------------------------------------------------------


@dataclass
class Command:
    """One runnable thing the docs show, and where."""

    kind: str  # "script" (python/torchrun path.py), "module" (python -m), "bash"
    target: str  # repository-relative path, or dotted module name
    where: list[str] = field(default_factory=list)  # "README.md:12: <command>"


_INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
_PY = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line, text) of every shell line in fenced blocks (continuations joined) and inline code."""
    out: list[tuple[int, str]] = []
    for m in _FENCE.finditer(text):
        first = text.count("\n", 0, m.start()) + 1
        body = m.group(0).split("\n")[1:-1]
        pending, start = "", 0
        for i, raw in enumerate(body, start=first + 1):
            if not pending:
                start = i
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            out.append((start, pending + raw))
            pending = ""
        if pending:
            out.append((start, pending))
    rest = strip_fences(text)
    for m in _INLINE.finditer(rest):
        out.append((rest.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return out


def _split_commands(line: str) -> list[list[str]]:
    """Whitespace tokens of each simple command in a shell line (split on ; && || | and $( )."""
    line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
    parts = re.split(r";|&&|\|\||\||\$\(|\)|\bdo\b|\bthen\b", line)
    return [p.split() for p in parts if p.strip()]


def _command_of(tokens: list[str]) -> tuple[str, str] | None:
    """(kind, target) of a tokenised simple command, or None when it runs nothing of ours."""
    i = 0
    while i < len(tokens) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[i]):
        i += 1  # environment prefixes: OMP_NUM_THREADS=1 python ...
    while i < len(tokens) and tokens[i] in ("srun", "time", "exec", "nohup", "sudo"):
        i += 1
        while i < len(tokens) and tokens[i].startswith("-"):
            i += 1
    if i >= len(tokens):
        return None
    head, args = tokens[i], tokens[i + 1 :]
    if head == "bash" or head == "sh":
        scripts = [a for a in args if a.endswith(".sh")]
        return ("bash", scripts[0]) if scripts else None
    if _PY.match(head) or head == "torchrun":
        j = 0
        while j < len(args):
            a = args[j]
            if a == "-m" and j + 1 < len(args):
                return "module", args[j + 1]
            if a == "-c" or a.startswith("-c"):
                return None  # inline programs: not a command of ours
            if a in ("-X", "-W"):
                j += 2
                continue
            if a.startswith("-"):
                j += 1
                continue
            return ("script", a) if a.endswith(".py") else None
        return None
    return None


def collect_commands() -> dict[tuple[str, str], Command]:
    """Every distinct script / module / bash script the docs show, with where it is shown."""
    found: dict[tuple[str, str], Command] = {}
    for doc in doc_files():
        for line, snippet in _snippets(doc.read_text(encoding="utf-8")):
            for tokens in _split_commands(snippet):
                got = _command_of(tokens)
                if got is None:
                    continue
                cmd = found.setdefault(got, Command(*got))
                cmd.where.append(f"{doc.relative_to(ROOT)}:{line}: {' '.join(tokens)[:160]}")
    return found


def _is_ours(module: str) -> bool:
    first = module.split(".")[0]
    return (ROOT / first).is_dir() or (ROOT / f"{first}.py").is_file()


def test_extraction_is_robust():
    """Continuations, env prefixes, placeholders, torchrun options, loops and -c are handled."""
    doc = (
        "```bash\n"
        "OMP_NUM_THREADS=1 python benchmarks/x.py --out $OUT/a.json \\\n"
        "    --flag 1\n"
        'srun torchrun --nnodes="$N" --rdzv_endpoint="$head:29500" \\\n'
        "    main_pretrain.py ... --output_dir runs\n"
        'for m in a b; do torchrun --nproc_per_node=8 benchmarks/y.py --model "$m"; done\n'
        "python -m util.data.synthetic eurosat data --num 3   # a comment: python z.py\n"
        "python -c \"import q; print('$NAME')\"\n"
        "SPECTRALGPT_TORCH=cpu bash scripts/demo.sh\n"
        "```\n"
        "Inline: `python -m\nutil.training.checkpoint info CKPT` and `python tool.py`.\n"
    )
    got = set()
    for _, s in _snippets(doc):
        for tokens in _split_commands(s):
            c = _command_of(tokens)
            if c:
                got.add(c)
    assert got == {
        ("script", "benchmarks/x.py"),
        ("script", "main_pretrain.py"),
        ("script", "benchmarks/y.py"),
        ("module", "util.data.synthetic"),
        ("module", "util.training.checkpoint"),
        ("bash", "scripts/demo.sh"),
        ("script", "tool.py"),
    }, got


def test_docs_show_the_entry_points():
    """The extraction finds what the README is about (a guard against it silently finding nothing)."""
    found = collect_commands()
    for key in [
        ("bash", "scripts/demo.sh"),
        ("bash", "scripts/test.sh"),
        ("script", "main_pretrain.py"),
        ("script", "main_finetune.py"),
        ("script", "downstream_tasks/train.py"),
        ("script", "predict.py"),
    ]:
        assert key in found, f"no command of {key[1]} in README.md or docs/"


@pytest.mark.slow
def test_every_shown_command_answers_help():
    """Each distinct script / module shown in the docs runs ``--help`` with exit status 0."""
    found = collect_commands()
    failures: list[str] = []
    jobs = []
    for (kind, target), cmd in sorted(found.items()):
        shown = "\n    ".join(cmd.where[:3])
        if kind == "bash":
            path = ROOT / target
            if not path.is_file():
                failures.append(f"{target}: no such file\n    {shown}")
                continue
            r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            if r.returncode:
                failures.append(f"bash -n {target}: rc {r.returncode}\n{r.stderr}\n    {shown}")
        elif kind == "script":
            if not (ROOT / target).is_file():
                failures.append(
                    f"{target}: no such file (run from the repository root)\n    {shown}"
                )
                continue
            jobs.append({"kind": kind, "target": target, "shown": shown})
        elif _is_ours(target):
            jobs.append({"kind": kind, "target": target, "shown": shown})
        elif importlib.util.find_spec(target) is None:  # another package's module: installed?
            failures.append(f"python -m {target}: module not installed\n    {shown}")
    assert jobs, "no python command found in the docs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--help-driver"],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=HELP_TIMEOUT * len(jobs),
    )
    assert proc.returncode == 0, f"help driver failed:\n{proc.stderr[-4000:]}"
    for res in json.loads(proc.stdout):
        shown = res["shown"]
        run = ("python -m " if res["kind"] == "module" else "python ") + res["target"]
        if res["rc"] == 0 and "usage:" not in res["stdout"].lower():
            failures.append(
                f"{run} --help: rc 0 but printed no usage (does it read --help?)\n"
                f"--- stdout (tail) ---\n{res['stdout'][-1000:]}\n--- shown at ---\n    {shown}"
            )
        elif res["rc"] != 0:
            failures.append(
                f"{run} --help: rc {res['rc']}\n--- stderr (tail) ---\n{res['stderr'][-2500:]}"
                f"\n--- shown at ---\n    {shown}"
            )
    assert not failures, f"{len(failures)} command(s) from the docs fail:\n\n" + "\n\n".join(
        failures
    )


# ---- the --help driver (runs as ``python tests/test_docs.py --help-driver``) ---------------------


def _child(job: dict, base_path: list[str], out_fd: int, err_fd: int) -> None:
    """In a forked child: become ``python <script> --help`` / ``python -m <module> --help``."""
    import runpy
    import traceback

    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    code = 1
    try:
        if job["kind"] == "script":
            script = str(ROOT / job["target"])
            sys.argv = [script, "--help"]
            sys.path[:] = [str(Path(script).parent), *base_path]
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = [job["target"], "--help"]
            sys.path[:] = [str(ROOT), *base_path]
            runpy.run_module(job["target"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - report anything, as the interpreter would
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _driver() -> None:
    """Read jobs (JSON on stdin), run each ``--help`` in a forked child, print results as JSON."""
    import select  # noqa: F401 - imported before forking, as everything heavy
    import tempfile
    import time

    jobs = json.load(sys.stdin)
    # sys.path of a plain interpreter: drop the entry for this file's folder (tests/).
    base_path = [p for p in sys.path[1:] if Path(p or ".").resolve() != ROOT]
    for name in ("torch", "torchvision", "timm", "torchmetrics", "numpy", "einops", "rasterio",
                 "matplotlib.pyplot", "tensorboard", "tqdm"):  # fmt: skip
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - the child reports a missing package itself
            pass
    results: list[dict] = []
    running: dict[int, tuple[dict, object, object, float]] = {}
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < PARALLEL:
            job = queue.pop(0)
            out = tempfile.TemporaryFile()
            err = tempfile.TemporaryFile()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job, base_path, out.fileno(), err.fileno())
            running[pid] = (job, out, err, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for p, (_job, _, _, t0) in list(running.items()):
                if time.monotonic() - t0 > HELP_TIMEOUT:
                    os.kill(p, 9)
            time.sleep(0.05)
            continue
        job, out, err, t0 = running.pop(pid)
        out.seek(0)
        err.seek(0)
        rc = os.waitstatus_to_exitcode(status)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        if rc == -9 and time.monotonic() - t0 > HELP_TIMEOUT:
            stderr += f"\n(killed after {HELP_TIMEOUT} s)"
        results.append(
            {**job, "rc": rc, "stdout": stdout, "stderr": stderr, "seconds": time.monotonic() - t0}
        )
        out.close()
        err.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__" and sys.argv[1:] == ["--help-driver"]:
    _driver()
elif __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
