"""Nothing in the data path runs code from data: a static check of the package sources (ast, not grep).

Rules, for every module of ``shards``, ``preprocess`` and ``train``:

* no unpickling: ``pickle``/``cPickle``/``dill``/``cloudpickle`` ``load``/``loads``/``Unpickler``,
  ``joblib.load``, ``pandas.read_pickle``, ``marshal.load(s)``, ``shelve.open``;
* ``numpy.load`` only without ``allow_pickle`` (or with ``allow_pickle=False``);
* every ``torch.load`` passes ``weights_only=True``;
* YAML only through ``yaml.safe_load`` / ``yaml.safe_dump`` (also no ``yaml.load``/``unsafe_load``/
  ``full_load``/``Loader``);
* no ``eval``/``exec``;
* no shell: no ``os.system``/``os.popen``/``subprocess.getoutput``/``getstatusoutput``/
  ``asyncio.create_subprocess_shell``, no ``subprocess`` call with ``shell=`` anything but
  ``False``, and no ``subprocess`` call given a command string instead of an argument list.

Names are resolved through the module's imports (``import pickle as p``, ``from yaml import load``).
``bench/`` is outside the data path: it writes and reads the reference project's per-track pickles on
purpose, as the baseline it measures against.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = ("shards", "preprocess", "train")
REPO = Path(__file__).resolve().parents[1]

PICKLERS = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle")
FORBIDDEN = {f"{m}.{f}" for m in PICKLERS for f in ("load", "loads", "Unpickler")} | {
    "joblib.load",
    "pandas.read_pickle",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "yaml.load",
    "yaml.load_all",
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
    "yaml.full_load_all",
    "yaml.Loader",
    "yaml.UnsafeLoader",
    "yaml.FullLoader",
    "yaml.dump",
    "yaml.dump_all",
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
    "builtins.eval",
    "builtins.exec",
}
SUBPROCESS_CALLS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")}


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it refers to, from the module's import statements."""
    names = {"eval": "builtins.eval", "exec": "builtins.exec"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """``np.load`` -> 'numpy.load' (through the imports); None for anything that is not a plain name path."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    return ".".join([names[node.id], *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def check_source(source: str, filename: str = "<string>") -> list[str]:
    """Every rule broken in ``source``, as 'file:line: problem' strings."""
    tree = ast.parse(source, filename)
    names = _imports(tree)
    problems = []

    def bad(node: ast.AST, problem: str) -> None:
        problems.append(f"{filename}:{node.lineno}: {problem}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(node.ctx, ast.Store):
            target = _dotted(node, names)
            if target in FORBIDDEN:
                bad(node, f"uses {target}")
        if not isinstance(node, ast.Call):
            continue
        target = _dotted(node.func, names)
        if target == "numpy.load":
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_const(allow, False):
                bad(node, "numpy.load with allow_pickle other than False")
        elif target == "torch.load":
            if not _is_const(_keyword(node, "weights_only"), True):
                bad(node, "torch.load without weights_only=True")
        elif target in SUBPROCESS_CALLS:
            shell = _keyword(node, "shell")
            if shell is not None and not _is_const(shell, False):
                bad(node, f"{target} with shell={ast.unparse(shell)}")
            command = node.args[0] if node.args else _keyword(node, "args")
            if isinstance(command, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                isinstance(command, ast.Call)
                and isinstance(command.func, ast.Attribute)
                and command.func.attr in ("format", "join")
            ):
                bad(node, f"{target} given a command string, not an argument list")
    # An attribute chain is visited once per prefix (pickle.load and pickle): report each spot once.
    return sorted(set(problems))


def package_sources() -> list[Path]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) >= 20 and {p.parent.name for p in files} >= set(PACKAGES)
    return files


def test_data_path_never_runs_code_from_data():
    problems = [
        p
        for path in package_sources()
        for p in check_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert problems == []


def test_the_checks_that_matter_are_exercised_by_the_sources():
    """The rules above are not vacuous: the sources do load checkpoints, YAML and run processes."""
    calls = set()
    for path in package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _imports(tree)
        calls |= {_dotted(n.func, names) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"torch.load", "yaml.safe_load", "yaml.safe_dump", "subprocess.run"} <= calls


BAD_EXAMPLES = {
    "import pickle\npickle.load(open('x', 'rb'))\n": "pickle.load",
    "import pickle as p\nobj = p.loads(b'')\n": "pickle.loads",
    "from pickle import Unpickler\nUnpickler(f).load()\n": "pickle.Unpickler",
    "import joblib\njoblib.load('cache.pkl')\n": "joblib.load",
    "import pandas as pd\npd.read_pickle('x')\n": "pandas.read_pickle",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)\n": "allow_pickle",
    "import numpy\nflag = True\nnumpy.load('x.npy', allow_pickle=flag)\n": "allow_pickle",
    "import torch\ntorch.load('m.pt')\n": "weights_only",
    "import torch\ntorch.load('m.pt', weights_only=False)\n": "weights_only",
    "import torch as t\nt.load('m.pt', map_location='cpu')\n": "weights_only",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)\n": "yaml.load",
    "from yaml import full_load\nfull_load(text)\n": "yaml.full_load",
    "import yaml\nyaml.unsafe_load(text)\n": "yaml.unsafe_load",
    "import os\nos.system('ls ' + path)\n": "os.system",
    "from os import popen\npopen(cmd)\n": "os.popen",
    "import subprocess\nsubprocess.run(f'sbatch {path}', shell=True)\n": "shell=True",
    "import subprocess as sp\nsp.Popen(cmd, shell=use_shell)\n": "shell=use_shell",
    "import subprocess\nsubprocess.check_output('squeue --me')\n": "command string",
    "from subprocess import run\nrun(' '.join(['scancel', job]))\n": "command string",
    "import subprocess\nsubprocess.getoutput('ls')\n": "subprocess.getoutput",
    "eval(text)\n": "builtins.eval",
}


@pytest.mark.parametrize("source", BAD_EXAMPLES, ids=range(len(BAD_EXAMPLES)))
def test_checker_catches_a_planted_bad_example(source):
    problems = check_source(source, "planted.py")
    assert problems and any(BAD_EXAMPLES[source] in p for p in problems), problems
    assert all(p.startswith("planted.py:") for p in problems)


def test_checker_accepts_the_safe_forms():
    source = '''
"""A docstring may say pickle.load(f), yaml.load or shell=True: it is not code."""
import subprocess

import numpy as np
import torch
import yaml

# comment: torch.load(path) os.system("x")
state = torch.load(path, map_location="cpu", weights_only=True)
data = yaml.safe_load(text)
text = yaml.safe_dump(data)
images = np.load("x.npy", mmap_mode="r")
labels = np.load("y.npy", allow_pickle=False)
subprocess.run(["squeue", "--me"], capture_output=True, check=False)
subprocess.run(cmd, shell=False)
'''
    assert check_source(source) == []
