"""The layers: imports only look down (the import order, not the data flow), no cycles, no
method routed by name, and the registry refuses inconsistent methods.

Layers (a package may import those listed for it, and nothing else of the package):

    cli -> commands -> engine -> pipelines -> experiment -> train -> methods -> catalogue
    (engine -> report; report reads records only: catalogue, io, errors -- never jax)
    features -> convert -> clip -> data; everything -> io, errors
"""

import ast
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxclip_fs import catalogue, methods
from jaxclip_fs.catalogue import Card
from jaxclip_fs.methods import hparams
from jaxclip_fs.methods.base import Compute, Hyperparameters, Method, Training, check_method
from jaxclip_fs.methods.optimizers import Optimizer

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxclip_fs")
BASE = {"errors", "io", "version"}
ALLOWED = {
    "version": set(),  # jaxclip_fs/__init__.py
    "errors": set(),
    "catalogue": set(),
    "io": {"errors", "version"},
    "data": {"errors", "io"},
    "clip": {"data"} | BASE,
    "convert": {"clip"} | BASE,
    "features": {"clip", "convert", "data"} | BASE,
    "methods": {"catalogue"} | BASE,
    "train": {"methods", "clip", "features"} | BASE,
    "experiment": {"catalogue", "methods"} | BASE,
    "pipelines": {"experiment", "train", "methods", "features", "convert", "clip", "data",
                  "catalogue"} | BASE,
    "report": {"catalogue"} | BASE,
    "engine": {"pipelines", "experiment", "train", "methods", "features", "data", "report",
               "catalogue"} | BASE,
    "commands": {"engine", "pipelines", "experiment", "train", "methods", "features", "convert",
                 "clip", "data", "report", "catalogue"} | BASE,
    "cli": {"commands"} | BASE,
}
JAX_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax", "chex")


def _modules():
    """module name -> (path, parsed tree) for every file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = (path, ast.parse(open(path, encoding="utf-8").read()))
    return found


MODULES = _modules()


def _imports(module: str, tree) -> set[str]:
    """The package modules ``module`` imports (anywhere in it, lazily too)."""
    out = set()
    package = module if os.path.basename(MODULES[module][0]) == "__init__.py" else \
        module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return "version" if len(parts) == 1 else parts[1]


def test_imports_only_look_down_the_layers():
    wrong = []
    for module, (_, tree) in MODULES.items():
        here = _layer(module)
        for target in _imports(module, tree):
            there = _layer(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))
    assert set(ALLOWED) == {_layer(m) for m in MODULES}  # every package has its row


def test_no_import_cycles():
    graph = {m: _imports(m, tree) for m, (_, tree) in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the data flow
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] +
                                                                      [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_report_never_imports_jax():
    for module, (_, tree) in MODULES.items():
        if _layer(module) != "report":
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in JAX_LIBRARIES for n in names), (module, names)


#: Method names that are also another thing's name, and the only modules where that other
#: thing is named: "coop" is CoOp's split files (a data source) and CoOp's validation cap
#: (a val-rows policy) as well as the CoOp method.
HOMONYMS = {"coop": ("jaxclip_fs.data", "jaxclip_fs.experiment.config",
                     "jaxclip_fs.experiment.protocol", "jaxclip_fs.commands.common",
                     "jaxclip_fs.engine.image_program", "jaxclip_fs.engine.batch")}


def _homonym(name: str, module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in HOMONYMS.get(name, ()))


def test_no_method_is_named_outside_its_module_and_its_card():
    names = set(catalogue.NAMES)
    assert set(HOMONYMS) <= names  # (a homonym no longer a method name: drop it)
    allowed = {"jaxclip_fs.catalogue"}  # (the registry reads the cards: it names none)
    wrong = []
    for module, (path, tree) in MODULES.items():
        if module in allowed:
            continue
        own = module.rpartition(".")[2]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in names and not _homonym(node.value, module) and not (
                        module.startswith("jaxclip_fs.methods.") and node.value == own):
                    wrong.append(f"{path}:{node.lineno}: '{node.value}'")
    assert not wrong, "\n".join(wrong)


def test_the_registry_is_the_catalogue_cards():
    """A shipped method is its module plus its card: the registry registers every card's
    factory, in card order, and the method carries that very card (name, inputs, display)."""
    assert methods.names() == catalogue.NAMES
    for name in methods.names():
        assert methods.get(name).card is catalogue.card(name)
    assert catalogue.display_name("ldc[fusion=concat]") == "LDC [fusion=concat]"
    assert catalogue.split_label("ldc[ablation=maf_only,fusion=concat]") == (
        "ldc", {"ablation": "maf_only", "fusion": "concat"})
    assert methods.get("ldc", fusion="concat").label == "ldc[fusion=concat]"
    assert methods.get("ldc", fusion="fixed").label == "ldc"  # defaults are not spelled out


def test_catalogue_reads_no_jax():
    code = ("import sys, jaxclip_fs.catalogue as c; c.published('RN50', 'x', 16, 'ldc', 'dtd'); "
            "print('jax' in sys.modules, len(c.CARDS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", str(len(catalogue.CARDS))]


def _method(card=None, compute=None, hyper=None, **parts):
    base = Hyperparameters((hparams.ALPHA,), grid=lambda d: {"alpha": np.linspace(0, 1, 3)})
    return Method(card or Card("broken"),
                  compute or Compute(init=lambda k, t, h: {}, precompute=lambda p, t, q, m: {},
                                     terms=lambda pre, p, t, h: (0, {}), linear=("alpha",)),
                  hyper or base, **parts)


def _compute(**changes):
    return dataclasses.replace(_method().compute, **changes)


def _hyper(**changes):
    return dataclasses.replace(_method().hyper, **changes)


@pytest.mark.parametrize("parts, needle", [
    (dict(hyper=_hyper(grid=lambda d: {"beta": np.ones(2)})), "grid names 'beta'"),
    (dict(hyper=_hyper(grid=lambda d: {"alpha": np.zeros((0,))})), "non-empty 1-D"),
    (dict(hyper=_hyper(validation_free={"gamma": 1.0})), "validation_free names 'gamma'"),
    (dict(compute=_compute(linear=("gamma",))), "linear names 'gamma'"),
    (dict(card=Card("broken", inputs="images")), "needs bind"),
    (dict(compute=_compute(confusion=("a", "b"))), "reports none"),
    (dict(training=Training(trainable=())), "learns nothing"),
    (dict(training=Training(("w",), unit="hours")), "unit must be one of"),
    (dict(training=Training(("w",), unit="steps")), "keeps its final iterate"),
    (dict(training=Training(("w",), eval_every=10)), "eval_every (a positive number"),
    (dict(training=Training(("w",), epoch_end=lambda p, t, h: {})), "epoch_end updates state"),
    (dict(hyper=_hyper(declared=(hparams.ALPHA, hparams.LR)), training=Training(("w",))),
     "declared twice"),  # (the default optimizer declares lr)
])
def test_register_refuses_inconsistent_methods(parts, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        methods.register(lambda: _method(**parts))
    assert "broken" not in methods.names()


def test_a_card_refuses_unknown_inputs():
    with pytest.raises(ValueError, match="inputs must be one of"):
        Card("broken", inputs="pixels")


def test_training_declares_what_its_optimizer_reads():
    """The default optimizer asks for AdamW's settings; another optimizer for its own only."""
    adamw = _method(training=Training(("w",)))
    assert adamw.names("train") == ("epochs", "batch_size", "lr", "eps", "weight_decay")
    momentum = hparams.HParam("momentum", "train", "SGD momentum", minimum=0.0)
    sgd = Optimizer(lambda hp, steps, params: None, (hparams.LR, momentum))
    for training, names in [
            (Training(("w",), optimizer=sgd), ("epochs", "batch_size", "lr", "momentum")),
            (Training(("w",), optimizer=sgd, full_batch=True), ("epochs", "lr", "momentum")),
            (Training(("w",), optimizer=sgd, unit="steps", epoch_selection="final"),
             ("steps", "batch_size", "lr", "momentum"))]:
        method = check_method(_method(training=training))
        assert method.names("train") == names
