"""The layers of the package: inference (reading, tiling, onnxruntime, writing, the jobs
and the command line) runs without torch, in the command's process and in its workers;
the import graph has no cycles and the inference modules import nothing of the training
side (torch, the network, noise, training and export modules)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_ngff
from PIL import Image

import fm2s

PACKAGE = Path(fm2s.__file__).resolve().parent
ROOT = PACKAGE.parent

INFERENCE = ["fm2s.runtime", "fm2s.runs", "fm2s.tiling", "fm2s.readers", "fm2s.writers",
             "fm2s.formats", "fm2s.pixels", "fm2s.normalize", "fm2s.cluster", "fm2s.jobs",
             "fm2s.api", "fm2s.package", "fm2s.preview", "fm2s.layouts", "fm2s.batch"]
#: the training side by name; any other module that imports torch at module level counts as
#: training side too
TORCH_SIDE = ["fm2s.network", "fm2s.noise", "fm2s.cudagraph", "fm2s.training", "fm2s.export",
              "fm2s.selection", "fm2s.model", "fm2s.grouped"]

#: function-level imports of the training side that the inference modules may make:
#: (module, function) -> what it imports
LAZY_TRAINING_IMPORTS = {
    ("fm2s", "__getattr__"): {"fm2s.model"},  # fm2s.TrainedModel
    ("fm2s.api", "train"): {"fm2s.model"},
    ("fm2s.jobs", "train_and_apply"): {"fm2s.model"},
    # a stack's channels trained as one batched program (issue 28)
    ("fm2s.jobs", "_channels_together"): {"fm2s.grouped", "fm2s.model", "fm2s.training"},
    ("fm2s.batch", "_shared_models"): {"fm2s.model"},  # --share-models
    # many images' models trained as batched programs (issue 28)
    ("fm2s.batch", "train_and_apply_many"): {"fm2s.grouped", "fm2s.model", "fm2s.training"},
    ("fm2s.package", "torchscript"): {"torch", "fm2s.export"},  # writing a package
    ("fm2s.runtime", "choose_providers"): {"torch"},  # CUDA libraries for onnxruntime-gpu
}


# --------------------------------------------------------------------------------------
# inference without torch, in subprocesses that cannot import it


@pytest.fixture
def no_torch_env(tmp_path) -> dict[str, str]:
    """An environment in which ``import torch`` fails, for a process and every process it
    starts (dask workers included): a ``torch`` package first on PYTHONPATH that raises."""
    blocker = tmp_path / "blocker"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text(
        'raise ImportError("torch is blocked by the test")\n')
    path = os.pathsep.join([str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONWARNINGS": "ignore"}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env,
                           capture_output=True, text=True)
    assert "torch is blocked by the test" in check.stderr
    return env


def test_the_blocker_reaches_worker_processes(no_torch_env):
    """A worker of a local dask cluster started under the blocker cannot import torch either
    (so that the ``--workers`` run below proves the workers need no torch)."""
    code = """
import importlib
from distributed import Client, LocalCluster


def try_torch():
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        return str(exc)
    return "imported"


if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        print(list(client.run(try_torch).values()))
"""
    res = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['torch is blocked by the test']", res.stdout + res.stderr


def _cli(env: dict[str, str], *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fm2s.cli", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _roughness(image: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels along X (noise makes it large)."""
    return float(np.mean(np.abs(np.diff(np.asarray(image, np.float64), axis=-1))))


@pytest.fixture
def small_volume(tmp_path, stack_uint16) -> Path:
    return write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=2)


@pytest.fixture
def small_png(tmp_path, noisy_and_truth) -> Path:
    noisy, _ = noisy_and_truth
    path = tmp_path / "cells.png"
    Image.fromarray(np.clip(noisy.astype(np.int64) - 80, 0, 255).astype(np.uint8)).save(path)
    return path


def test_info_needs_no_torch(no_torch_env, small_volume, small_png):
    res = _cli(no_torch_env, "info", small_volume)
    assert res.returncode == 0, res.stderr
    assert "OME-Zarr (NGFF 0.5)" in res.stdout and "2 x 2 x 3 x 75 x 133" in res.stdout
    res = _cli(no_torch_env, "info", small_png)
    assert res.returncode == 0, res.stderr
    assert "PNG" in res.stdout and "64 x 80" in res.stdout


def _read_level0(path: Path) -> np.ndarray:
    """Level 0 of an OME-Zarr, read with ome-zarr-py (independent of fm2s's readers)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return np.asarray(next(iter(Reader(parse_url(str(path)))())).data[0])


def test_apply_needs_no_torch_threads_and_workers(no_torch_env, tmp_path, small_volume,
                                                  stack_uint16, quick_model):
    threads, procs = tmp_path / "threads.ome.zarr", tmp_path / "procs.ome.zarr"
    res = _cli(no_torch_env, "apply", quick_model, small_volume, "-o", threads,
               "--provider", "cpu", "-q")
    assert res.returncode == 0, res.stderr
    assert "local threads" in res.stdout
    res = _cli(no_torch_env, "apply", quick_model, small_volume, "-o", procs,
               "--provider", "cpu", "-q", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "2 workers" in res.stdout
    for out in (threads, procs):
        denoised = _read_level0(out)
        assert denoised.dtype == np.uint16 and denoised.shape == stack_uint16.shape
        assert _roughness(denoised) < 0.5 * _roughness(stack_uint16)
    np.testing.assert_array_equal(_read_level0(procs), _read_level0(threads))


def test_apply_png_needs_no_torch(no_torch_env, tmp_path, small_png, quick_model):
    out = tmp_path / "out.png"
    res = _cli(no_torch_env, "apply", quick_model, small_png, "-o", out)
    assert res.returncode == 0, res.stderr
    with Image.open(small_png) as im:
        noisy = np.asarray(im)
    with Image.open(out) as im:
        denoised = np.asarray(im)
    assert denoised.dtype == np.uint8 and denoised.shape == noisy.shape
    assert _roughness(denoised) < 0.5 * _roughness(noisy)


def test_training_without_torch_is_a_one_line_error(no_torch_env, tmp_path, small_png):
    out = tmp_path / "out.png"
    res = _cli(no_torch_env, "train-and-apply", small_png, "-o", out, "--device", "cpu", "-q")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "torch" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "cells.png"]


def test_importing_the_inference_side_imports_no_torch():
    code = ("import fm2s, fm2s.jobs, fm2s.tiling, fm2s.cli, sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------
# the import graph, from the source


def _module_name(path: Path) -> str:
    return "fm2s" if path.stem == "__init__" else f"fm2s.{path.stem}"


def _is_package(name: str) -> bool:
    return name == "fm2s"


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The absolute modules an ``from X import a, b`` names (a submodule counts as a module)."""
    if node.level:
        package = module if _is_package(module) else module.rsplit(".", 1)[0]
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    names = [target]
    if target == "fm2s":  # ``from . import x``: x may be a submodule
        names += [f"fm2s.{a.name}" for a in node.names
                  if (PACKAGE / f"{a.name}.py").is_file()]
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Imports of one module: at module level (run on import), inside functions (run when
    called, recorded with the function's name) and under ``if TYPE_CHECKING`` (never run)."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.function: list[str] = []
        self.type_only = 0
        self.top: set[str] = set()
        self.lazy: dict[str, set[str]] = {}
        self.typing: set[str] = set()

    def _add(self, names: list[str]) -> None:
        names = [n for n in names if n]
        if self.type_only:
            self.typing.update(names)
        elif self.function:
            self.lazy.setdefault(self.function[0], set()).update(names)
        else:
            self.top.update(names)

    def visit_Import(self, node: ast.Import) -> None:
        self._add([a.name for a in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module != "__future__":
            self._add(_resolve(self.module, node))

    def _visit_function(self, node) -> None:
        self.function.append(node.name)
        self.generic_visit(node)
        self.function.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def _internal(name: str) -> str | None:
    """The fm2s module an imported name is (``fm2s.x.y`` -> ``fm2s.x``), or None."""
    parts = name.split(".")
    if parts[0] != "fm2s":
        return None
    return ".".join(parts[:2])


def _external(name: str) -> str | None:
    return None if name.split(".")[0] == "fm2s" else name.split(".")[0]


@pytest.fixture(scope="module")
def imports() -> dict[str, _Imports]:
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        module = _module_name(path)
        visitor = _Imports(module)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found[module] = visitor
    assert {"fm2s", "fm2s.cli", "fm2s.jobs", "fm2s.model"} <= set(found)
    return found


def _edges(names: set[str], module: str) -> set[str]:
    """fm2s modules among ``names``, and external top-level packages (e.g. ``torch``)."""
    out = set()
    for name in names:
        target = _internal(name) or _external(name)
        if target and target != module:
            out.add(target)
    return out


@pytest.fixture(scope="module")
def graph(imports) -> dict[str, set[str]]:
    """Module-level import edges (what ``import module`` runs), fm2s modules and packages."""
    return {m: _edges(v.top, m) for m, v in imports.items()}


@pytest.fixture(scope="module")
def torch_side(graph) -> set[str]:
    """The named training-side modules and every module that imports torch at module level."""
    return {m for m in graph if m in TORCH_SIDE or "torch" in _reach(graph, m)}


def _reach(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Everything ``start`` imports transitively at module level, with one path to each."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                todo.append(nxt)
    return paths


def test_internal_imports_resolve_to_modules(imports):
    modules = set(imports)
    for module, visitor in imports.items():
        names = visitor.top | visitor.typing | set().union(*visitor.lazy.values())
        for name in names:
            target = _internal(name)
            assert target is None or target in modules, f"{module} imports missing {name}"


def test_module_level_imports_have_no_cycles(graph):
    internal = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(internal[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(internal):
        if module not in state:
            visit(module)


def test_the_graph_finds_the_training_side(graph, torch_side):
    named = [m for m in TORCH_SIDE if m in graph]
    assert len(named) >= 5, named
    for module in named:  # each of them imports torch (directly or through another)
        assert "torch" in _reach(graph, module), module
    assert not set(INFERENCE) & torch_side


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_modules_import_no_training_side(graph, torch_side, module):
    assert module in graph
    reached = _reach(graph, module)
    for banned in sorted({"torch", *torch_side} - {module}):
        assert banned not in reached, (f"{module} imports {banned} at module level: "
                                       + " -> ".join(reached[banned]))


def test_training_side_is_imported_lazily_and_only_by_the_training_entry_points(imports,
                                                                               torch_side):
    """Function-level imports of torch or the torch-side modules from the package root and
    the inference modules happen only where training (or CUDA) is asked for."""
    banned = {"torch", *torch_side}
    for module in ["fm2s", *INFERENCE]:
        for function, names in imports[module].lazy.items():
            found = _edges(names, module) & banned
            allowed = LAZY_TRAINING_IMPORTS.get((module, function), set())
            assert found <= allowed, f"{module}.{function} imports {sorted(found - allowed)}"


def test_torch_side_modules_import_nothing_above_them(graph, torch_side):
    """The training side stays below the jobs, the command line and the demo."""
    above = {"fm2s", "fm2s.cli", "fm2s.jobs", "fm2s.api", "fm2s.demo", "fm2s.cluster",
             "fm2s.writers", "fm2s.readers", "fm2s.tiling", "fm2s.progress"}
    for module in sorted(torch_side):
        reached = set(_reach(graph, module))
        assert not reached & above, f"{module} imports {sorted(reached & above)}"


def test_nothing_imports_the_command_line(imports):
    for module, visitor in imports.items():
        names = visitor.top | set().union(*visitor.lazy.values())
        assert "fm2s.cli" not in _edges(names, module), f"{module} imports fm2s.cli"
