"""The import layering of gandance_jax, computed from the source (docs/ARCHITECTURE.md).

Every `import` / `from ... import` of a gandance_jax module anywhere in a module (top level or
inside a function) is an edge. The test fails when someone adds a cycle, an import from a
lower layer to a higher one, or an own-module import inside a function.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gandance_jax"

# Layers, lowest first: a module may import its own layer and the layers below it. Keys are
# module names or package prefixes (the longest matching key wins).
LAYERS = {
    "gandance_jax.layers": 0,
    "gandance_jax.multihost": 0,
    "gandance_jax.images": 0,
    "gandance_jax.errors": 0,
    "gandance_jax.console": 0,   # the terminal and log.txt (imports nothing of the project)
    "gandance_jax.data": 1,
    # The readers of torch files and pickles need numpy only; the NVIDIA/StyleGAN2 bridge
    # builds networks from them (as checkpoint does) and the export CLI is an entry point.
    "gandance_jax.interop.safe_pickle": 1,
    "gandance_jax.interop.torch_files": 1,
    "gandance_jax.interop": 3,
    "gandance_jax.interop.__main__": 9,
    "gandance_jax.networks": 2,
    "gandance_jax.checkpoint": 3,
    "gandance_jax.guidance": 4,
    "gandance_jax.sampler": 5,
    "gandance_jax.evaluation": 6,
    "gandance_jax.postprocess": 6,
    "gandance_jax.train": 8,
    # The run report reads a workdir (checkpoint's files, train.curves' plot); the training
    # loop rewrites it at each evaluation.
    "gandance_jax.report": 8,
    # The entry points: the config boundary (ConfigDict -> typed hyper-parameters), the
    # sample-file writer, the absl mains.
    "gandance_jax.config_lib": 9,
    "gandance_jax.sample_cli": 9,
    "gandance_jax.evaluation.cli": 9,
    "gandance_jax.train.aot": 10,
    "gandance_jax.main": 10,
    "gandance_jax": 0,  # the package's own __init__
}

# Explicit rules of ../shared/DESIGN.md and issue 11, checked on top of the ranks (so that a
# change of the table above cannot silently allow them).
FORBIDDEN = [
    (("gandance_jax.layers", "gandance_jax.networks"),
     ("gandance_jax.train", "gandance_jax.evaluation", "gandance_jax.sampler",
      "gandance_jax.guidance")),
    (("gandance_jax.checkpoint",), ("gandance_jax.train",)),
    (("gandance_jax.interop.nvidia",),
     ("gandance_jax.guidance", "gandance_jax.sampler", "gandance_jax.evaluation",
      "gandance_jax.train", "gandance_jax.postprocess", "gandance_jax.main")),
    (("gandance_jax.data", "gandance_jax.checkpoint", "gandance_jax.interop.safe_pickle",
      "gandance_jax.interop.torch_files"),
     ("gandance_jax.networks", "gandance_jax.guidance", "gandance_jax.sampler",
      "gandance_jax.evaluation", "gandance_jax.train", "gandance_jax.postprocess",
      "gandance_jax.sample_cli", "gandance_jax.main")),
]
# checkpoint reads and builds generators (load_generator), so it may import networks.
# interop.nvidia turns NVIDIA's pickles and state dicts into this project's StyleGAN2.
ALLOWED_EXCEPTIONS = {("gandance_jax.checkpoint", "gandance_jax.networks"),
                      ("gandance_jax.interop.nvidia", "gandance_jax.networks")}


def _module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
  rel = path.relative_to(package.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  return {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, pathlib.Path]) -> str | None:
  """The module a dotted import name refers to (a module, or the package of a name)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def _imports(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]
             ) -> list[tuple[str, int, bool]]:
  """[(imported module, line, inside a function)] of gandance_jax modules."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == "__init__.py"
  out = []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:
          anchor = module.split(".")
          anchor = anchor[:len(anchor) - child.level + (1 if is_package else 0)]
          base = ".".join(anchor + ([base] if base else []))
        # `from pkg import mod` imports pkg.mod when that is a module.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in child.names]
      for name in names:
        if name.startswith("gandance_jax"):
          target = _resolve(name, modules)
          if target is not None and target != module:
            out.append((target, child.lineno, in_function))
      visit(child, nested)

  visit(tree, False)
  return out


def _layer(module: str) -> int:
  key = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
  return LAYERS[key]


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
  return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
  modules = _modules()
  assert len(modules) > 20, f"found only {sorted(modules)} under {PACKAGE}"
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
  for module in graph:
    assert _layer(module) >= 0


def test_no_import_goes_up(graph):
  bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
         for m, edges in graph.items() for t, line, _ in edges
         if _layer(t) > _layer(m) and not (
             # A package's __init__ re-exports its own modules.
             t.startswith(m + "."))]
  assert not bad, "\n".join(bad)


def test_forbidden_directions(graph):
  bad = []
  for lower, higher in FORBIDDEN:
    for m, edges in graph.items():
      if not _matches(m, lower):
        continue
      for t, line, _ in edges:
        allowed = any(_matches(m, (a,)) and _matches(t, (c,)) for a, c in ALLOWED_EXCEPTIONS)
        if _matches(t, higher) and not allowed:
          bad.append(f"{m} imports {t} at line {line}")
  assert not bad, "\n".join(bad)


def test_no_cycles(graph):
  # Depth-first search with colours; report the first cycle found with its path.
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    stack.append(m)
    for t, _, _ in graph.get(m, []):
      if t.startswith(m + "."):
        continue  # a package importing its own modules is not a cycle back to it
      if state.get(t) == 1:
        return stack[stack.index(t):] + [t]
      if state.get(t) is None:
        found = visit(t)
        if found:
          return found
    stack.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state:
      cycle = visit(m)
      assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_own_imports_at_module_top(graph):
  # Lazy imports are for heavy optional dependencies (TensorFlow, torch, sklearn,
  # matplotlib), never for the package's own modules.
  bad = [f"{m} imports {t} inside a function at line {line}"
         for m, edges in graph.items() for t, line, inside in edges if inside]
  assert not bad, "\n".join(bad)


def test_the_checks_see_a_violation(tmp_path):
  # The checks above must fail on a bad graph (a test that cannot fail proves nothing).
  fake = tmp_path / "gandance_jax"
  (fake / "networks").mkdir(parents=True)
  (fake / "train").mkdir()
  (fake / "__init__.py").write_text("")
  (fake / "networks" / "__init__.py").write_text("")
  (fake / "train" / "__init__.py").write_text("")
  (fake / "networks" / "net.py").write_text("from gandance_jax.train import loop\n")
  (fake / "train" / "loop.py").write_text(
      "def f():\n  from gandance_jax.networks import net\n")
  modules = _modules(fake)
  g = {m: _imports(m, p, modules) for m, p in modules.items()}
  assert ("gandance_jax.train.loop", 1, False) in g["gandance_jax.networks.net"]
  assert ("gandance_jax.networks.net", 2, True) in g["gandance_jax.train.loop"]
  with pytest.raises(AssertionError, match="layer"):
    test_no_import_goes_up(g)
  with pytest.raises(AssertionError, match="import cycle"):
    test_no_cycles(g)
  with pytest.raises(AssertionError, match="inside a function"):
    test_own_imports_at_module_top(g)
  with pytest.raises(AssertionError, match="networks.net imports gandance_jax.train"):
    test_forbidden_directions(g)
