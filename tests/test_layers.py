"""The layout is the architecture: layers import only downwards, and nothing imports in a circle.

Built from the code's own imports (every `import` statement, at module level or inside a
function), so a shortcut added anywhere fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a module may import its own layer and the layers before it.
LAYERS = ("core", "data", "runtimes", "models", "evaluation", "training", "compression",
          "distillation", "converters", "serving", "web_demo", "pipeline", "reporting", "cli")
# What a package may import, where the order above allows more (a reason beside each).
# The converters verify every artifact in its runtime; they know nothing of training.
CONVERTERS_MAY_IMPORT = ("core", "data", "runtimes")
# A runtime runs a file: it needs no data pipeline, model builder or training code.
RUNTIMES_MAY_IMPORT = ("core",)
# The inference libraries: only `vgg_mobile.runtimes` runs models with them, and imports them
# inside the function that needs them, so that light commands stay light. (Converting with
# them, as `onnxruntime.quantization` does, is the converters' business.)
INFERENCE_LIBRARIES = ("ai_edge_litert.interpreter", "onnxruntime", "openvino")
HEAVY_LIBRARIES = ("tensorflow", "tf_keras", "keras", "ai_edge_litert", "onnxruntime", "openvino",
                   "onnx")


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("vgg_mobile", "converters"):
        for path in (ROOT / top).rglob("*.py"):
            # `converters/` installs as `vgg_mobile.converters` (pyproject's package-dir).
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if top == "converters":
                parts.insert(0, "vgg_mobile")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "api"


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported project module, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in modules else node.module
                found.append((target, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
    return [(target, top) for target, top in found if target in modules]


def _graph(modules: dict[str, Path], module_level_only: bool) -> dict[str, set[str]]:
    return {module: {t for t, top in _imports(path, modules)
                     if t != module and (top or not module_level_only)}
            for module, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, targets in graph.items():
        here = _layer(module)
        if here == "api":
            continue  # vgg_mobile/__init__.py and __main__.py sit above everything
        for target in targets:
            there = _layer(target)
            if there == "api" or LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{module} ({here}) imports {target} ({there})")
            elif here == "converters" and there not in (*CONVERTERS_MAY_IMPORT, "converters"):
                upward.append(f"{module} (converters) imports {target} ({there})")
            elif here == "runtimes" and there not in (*RUNTIMES_MAY_IMPORT, "runtimes"):
                upward.append(f"{module} (runtimes) imports {target} ({there})")
    return sorted(upward)


def _library_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module's full name, at module level?) for every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
    return found


def _is_under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def misplaced_runtime_imports(modules: dict[str, Path]) -> list[str]:
    """Inference libraries imported outside the runtimes, or imported at module level there."""
    found = []
    for module, path in modules.items():
        in_runtimes = _layer(module) == "runtimes"
        for name, top in _library_imports(path):
            if not in_runtimes and _is_under(name, INFERENCE_LIBRARIES) and not (
                    name.startswith("onnxruntime.quantization")):
                found.append(f"{module} imports {name}: running a model is vgg_mobile.runtimes' job")
            elif in_runtimes and top and _is_under(name, HEAVY_LIBRARIES):
                found.append(f"{module} imports {name} at module level: import it where it is used")
    return sorted(found)


def circles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    found = []

    def visit(module, stack):
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif not state.get(target):
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [])
    return found


def test_the_layout_is_what_this_test_knows():
    packages = {m.split(".")[1] for m in MODULES if m.startswith("vgg_mobile.") and m.count(".") >= 1}
    assert packages - set(LAYERS) <= {"__main__"}, (
        f"a new top-level module or package {sorted(packages - set(LAYERS))}: give it a layer here")


def test_no_layer_imports_one_above_it():
    assert not (found := upward_imports(_graph(MODULES, module_level_only=False))), "\n".join(found)


def test_only_the_runtimes_run_models_and_they_import_their_libraries_lazily():
    assert not (found := misplaced_runtime_imports(MODULES)), "\n".join(found)


def test_no_import_circle():
    assert not (found := circles(_graph(MODULES, module_level_only=True))), "\n".join(found)


def test_the_checks_find_a_planted_circle_and_upward_import(tmp_path):
    fake = {"vgg_mobile.core.a": tmp_path / "a.py", "vgg_mobile.core.b": tmp_path / "b.py",
            "vgg_mobile.cli.main": tmp_path / "main.py", "vgg_mobile.converters.x": tmp_path / "x.py"}
    fake["vgg_mobile.core.a"].write_text("from vgg_mobile.core import b\n")
    fake["vgg_mobile.core.b"].write_text("import vgg_mobile.core.a\n\ndef f():\n    import vgg_mobile.cli.main\n")
    fake["vgg_mobile.cli.main"].write_text("from vgg_mobile.core.a import thing\n")
    fake["vgg_mobile.converters.x"].write_text("from vgg_mobile.cli import main\n")
    fake["vgg_mobile.runtimes.r"] = tmp_path / "r.py"
    fake["vgg_mobile.runtimes.r"].write_text("import onnxruntime\nfrom vgg_mobile.data import dataset\n")
    fake["vgg_mobile.serving.s"] = tmp_path / "s.py"
    fake["vgg_mobile.serving.s"].write_text(
        "def f():\n    from ai_edge_litert.interpreter import Interpreter\n"
        "    from onnxruntime.quantization import quantize_static\n")
    fake["vgg_mobile.data.dataset"] = tmp_path / "dataset.py"
    fake["vgg_mobile.data.dataset"].write_text("")
    assert circles(_graph(fake, module_level_only=True)) == [
        "vgg_mobile.core.a -> vgg_mobile.core.b -> vgg_mobile.core.a"]
    assert upward_imports(_graph(fake, module_level_only=False)) == [
        "vgg_mobile.converters.x (converters) imports vgg_mobile.cli.main (cli)",
        "vgg_mobile.core.b (core) imports vgg_mobile.cli.main (cli)",
        "vgg_mobile.runtimes.r (runtimes) imports vgg_mobile.data.dataset (data)"]
    assert misplaced_runtime_imports(fake) == [
        "vgg_mobile.runtimes.r imports onnxruntime at module level: import it where it is used",
        "vgg_mobile.serving.s imports ai_edge_litert.interpreter: running a model is "
        "vgg_mobile.runtimes' job"]
