"""The house rules of the layout (issue 17), written as code.

Import direction (docs/DESIGN.md): entry scripts -> engines -> models / data / infrastructure.

* only entry scripts import an entry script (``main_*``, ``predict``, ``downstream_tasks.train``);
* nothing under ``util/`` imports an engine or an entry script;
* models import no data, training-infrastructure, engine or evaluation module, except the band
  facts of ``util.data.sentinel2`` (band names, wavelengths and the name mapping: constants, numpy
  only), which a model needs to say which bands it expects (``model.bands``, timm's
  ``pretrained_cfg``).

Every import counts, also those inside functions (lazy imports) and ``importlib.import_module``
with a literal name. Sizes: no module other than the tests and the synthetic-data generator
(``util/data/synthetic*.py``) exceeds 600 lines; entry scripts that are mains (``main_*.py``,
``predict.py``, ``downstream_tasks/train.py``) stay within 250.

The checkers take the repository root as an argument, so the tests at the bottom run them on
small trees that break each rule and check that they are caught.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MAX_LINES = 600
MAX_MAIN_LINES = 250
#: the one data module a model may import: band facts (constants, numpy only)
MODEL_MAY_IMPORT = frozenset({"util.data.sentinel2"})


# --------------------------------------------------------------------------------------------
# the repository's modules and their roles
# --------------------------------------------------------------------------------------------
def python_files(root: Path) -> dict[str, Path]:
    """Module name -> file of every ``.py`` file under ``root``; skips hidden folders, virtual
    environments, ``__pycache__`` and ``tests/golden`` (verbatim copies of reference code)."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not (here / d / "pyvenv.cfg").exists()
            and (here / d).relative_to(root).as_posix() != "tests/golden"
        )
        for name in sorted(files):
            if name.endswith(".py"):
                path = here / name
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if parts:
                    found[".".join(parts)] = path
    return found


def is_main(module: str) -> bool:
    """The entry scripts nothing but another entry script imports (and held to 250 lines)."""
    return (module.startswith("main_") and "." not in module) or module in (
        "predict",
        "downstream_tasks.train",
    )


def is_entry(module: str) -> bool:
    """Entry scripts: the mains, benchmarks and tests."""
    return is_main(module) or module.split(".")[0] in ("benchmarks", "tests")


def is_engine(module: str) -> bool:
    """Training / evaluation loops: ``engine_*``, the dense engine, the label-efficiency runs."""
    return (
        (module.startswith("engine_") and "." not in module)
        or module == "downstream_tasks.engine_dense"
        or module.startswith("evaluation.label_efficiency")
    )


def is_model(module: str) -> bool:
    """Model definitions: top-level ``models_*`` and the dense models, necks and heads."""
    return (module.startswith("models_") and "." not in module) or module in (
        "downstream_tasks.models_dense",
        "downstream_tasks.necks",
        "downstream_tasks.heads",
    )


def is_data(module: str) -> bool:
    return module == "util.data" or module.startswith("util.data.")


def is_training(module: str) -> bool:
    return module == "util.training" or module.startswith("util.training.")


def is_evaluation(module: str) -> bool:
    return module == "evaluation" or module.startswith("evaluation.")


# --------------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------------
def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The repository module ``import name`` loads last (longest prefix that is one), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute package of ``from ... import`` (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(repository module, line)`` of every import in ``path``, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = _absolute(node, module, path)
            for alias in node.names:
                sub = f"{package}.{alias.name}" if package else alias.name
                names.append(sub if sub in modules else package)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        targets = {t for t in (_resolve(n, modules) for n in names) if t not in (None, module)}
        for target in sorted(targets):
            yield target, node.lineno


_NOT_FOR_MODELS = (
    ("data module", is_data),
    ("training-infrastructure module", is_training),
    ("engine", is_engine),
    ("evaluation module", is_evaluation),
    ("entry script", is_entry),
)


def direction_violations(root: Path) -> dict[str, list[str]]:
    """Broken import-direction rules, by rule: ``{rule: ["file:line imports X (why)", ...]}``."""
    modules = python_files(root)
    found: dict[str, list[str]] = {"entry": [], "util": [], "models": []}
    for module, path in modules.items():
        rel = path.relative_to(root).as_posix()
        for target, line in imports_of(module, path, modules):
            where = f"{rel}:{line} imports {target}"
            if is_main(target) and not is_entry(module):
                found["entry"].append(f"{where} (only entry scripts import an entry script)")
            if module.split(".")[0] == "util" and (is_engine(target) or is_entry(target)):
                kind = "an engine" if is_engine(target) else "an entry script"
                found["util"].append(f"{where} (nothing under util/ imports {kind})")
            if is_model(module) and target not in MODEL_MAY_IMPORT:
                kind = next((k for k, test in _NOT_FOR_MODELS if test(target)), None)
                if kind is not None:
                    found["models"].append(f"{where} (a model imports no {kind})")
    return found


def size_violations(root: Path) -> dict[str, list[str]]:
    """Files over their line limit: ``{"modules": [...], "mains": [...]}``."""
    found: dict[str, list[str]] = {"modules": [], "mains": []}
    for module, path in python_files(root).items():
        if module.split(".")[0] == "tests" or module.startswith("util.data.synthetic"):
            continue
        rel = path.relative_to(root).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if is_main(module) and lines > MAX_MAIN_LINES:
            found["mains"].append(f"{rel}: {lines} lines (a main holds at most {MAX_MAIN_LINES})")
        elif lines > MAX_LINES:
            found["modules"].append(f"{rel}: {lines} lines (at most {MAX_LINES})")
    return found


# --------------------------------------------------------------------------------------------
# the rules on this repository
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def direction() -> dict[str, list[str]]:
    return direction_violations(REPO)


@pytest.fixture(scope="module")
def sizes() -> dict[str, list[str]]:
    return size_violations(REPO)


def test_the_checker_sees_the_repository():
    modules = python_files(REPO)
    assert {
        "main_pretrain",
        "models_vit_tensor",
        "util.data.sentinel2",
        "tests.test_layout",
    } <= set(modules)
    assert not any(m.startswith("tests.golden") for m in modules)
    assert not any("site-packages" in str(p) for p in modules.values())


def test_only_entry_scripts_import_entry_scripts(direction):
    assert not direction["entry"], "\n".join(direction["entry"])


def test_util_imports_no_engine_or_entry_script(direction):
    assert not direction["util"], "\n".join(direction["util"])


def test_models_import_no_data_training_engine_or_evaluation(direction):
    assert not direction["models"], "\n".join(direction["models"])


def test_no_module_exceeds_600_lines(sizes):
    assert not sizes["modules"], "\n".join(sizes["modules"])


def test_mains_are_at_most_250_lines(sizes):
    assert not sizes["mains"], "\n".join(sizes["mains"])


# --------------------------------------------------------------------------------------------
# the checkers catch what they must (a small tree breaking each rule)
# --------------------------------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_direction_checker_catches_each_rule(tmp_path):
    lazy = "def f():\n    {}\n"
    root = _tree(
        tmp_path,
        {
            "main_x.py": "import engine_x\n",
            "predict.py": "",
            "engine_x.py": "import models_x\nimport main_x  # engines are not entry scripts\n",
            "models_x.py": (
                "import torch\nfrom util.data import sentinel2  # band facts: allowed\n"
                + lazy.format("from util.training.args import DTYPES")
            ),
            "models_y.py": "import importlib\nimportlib.import_module('util.data.datasets')\n",
            "util/__init__.py": "",
            "util/data/__init__.py": "",
            "util/data/sentinel2.py": "import numpy\n",
            "util/data/datasets.py": "from util.training import cli\n",  # data -> training: fine
            "util/training/__init__.py": "",
            "util/training/args.py": "",
            "util/training/cli.py": lazy.format("from ..data import datasets"),  # fine
            "util/training/bad.py": lazy.format("import engine_x"),
            "util/inference/__init__.py": "",
            "util/inference/run.py": "from predict import main\n",
            "evaluation/__init__.py": "",
            "evaluation/label_efficiency.py": "import main_x\n",
            "downstream_tasks/__init__.py": "",
            "downstream_tasks/train.py": "import main_x\nimport engine_x\n",  # entry -> entry: fine
            "downstream_tasks/heads.py": "from evaluation import label_efficiency\n",
            "downstream_tasks/engine_dense.py": "from . import heads, necks\n",  # engine -> models
            "downstream_tasks/necks.py": "from .engine_dense import evaluate\n",  # relative
            "benchmarks/bench.py": "import main_x\nimport predict\n",
            "tests/test_x.py": "import main_x\nfrom downstream_tasks import train\n",
            ".venv/lib/site.py": "import main_x\n",  # ignored folders
            "tests/golden/paper.py": "import main_x\n",
        },
    )
    found = direction_violations(root)
    assert sorted(found["entry"]) == [
        "engine_x.py:2 imports main_x (only entry scripts import an entry script)",
        "evaluation/label_efficiency.py:1 imports main_x (only entry scripts import an entry script)",
        "util/inference/run.py:1 imports predict (only entry scripts import an entry script)",
    ]
    assert sorted(found["util"]) == [
        "util/inference/run.py:1 imports predict (nothing under util/ imports an entry script)",
        "util/training/bad.py:2 imports engine_x (nothing under util/ imports an engine)",
    ]
    assert sorted(found["models"]) == [
        "downstream_tasks/heads.py:1 imports evaluation.label_efficiency (a model imports no engine)",
        "downstream_tasks/necks.py:1 imports downstream_tasks.engine_dense (a model imports no engine)",
        "models_x.py:4 imports util.training.args "
        "(a model imports no training-infrastructure module)",
        "models_y.py:2 imports util.data.datasets (a model imports no data module)",
    ]


def test_size_checker_catches_long_files(tmp_path):
    def lines(n: int) -> str:
        return "x = 0\n" * n

    root = _tree(
        tmp_path,
        {
            "main_ok.py": lines(MAX_MAIN_LINES),
            "main_long.py": lines(MAX_MAIN_LINES + 1),
            "predict.py": lines(MAX_MAIN_LINES + 1),
            "downstream_tasks/train.py": lines(MAX_MAIN_LINES + 1),
            "engine_ok.py": lines(MAX_LINES),
            "engine_long.py": lines(MAX_LINES + 1),
            "util/data/synthetic.py": lines(3 * MAX_LINES),  # the generator: exempt
            "util/data/datasets.py": lines(MAX_LINES + 1),
            "tests/test_long.py": lines(3 * MAX_LINES),  # tests: exempt
        },
    )
    found = size_violations(root)
    assert sorted(found["mains"]) == [
        f"{p}: {MAX_MAIN_LINES + 1} lines (a main holds at most {MAX_MAIN_LINES})"
        for p in ("downstream_tasks/train.py", "main_long.py", "predict.py")
    ]
    assert sorted(found["modules"]) == [
        f"{p}: {MAX_LINES + 1} lines (at most {MAX_LINES})"
        for p in ("engine_long.py", "util/data/datasets.py")
    ]
