"""The layout is the architecture (docs/ARCHITECTURE.md, layering rules: shared parts live in their own module): the
imports of ``msvision/models`` and ``msvision/ops``, read with ``ast``, follow the data.

- a head imports no neck; a neck imports no head;
- a head package (``heads/<x>/``, or a head module ``heads/<x>.py``) imports no other
  head's modules, except the RoI-mask machinery the mask heads share
  (``heads/roi_mask/``), which itself imports no head;
- nothing in ``ops`` imports ``models``.

Every import counts: module level, inside functions, ``import a.b`` and relative ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "msvision"
SHARED_HEAD_PACKAGES = ("roi_mask",)


def module_name(path: Path, root: Path) -> str:
    """``msvision.models.heads.effseg.head`` of ``<root>/models/heads/effseg/head.py``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file; ``from a import b`` counts as
    ``a.b`` when that is a module or package of the tree, else as ``a``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if _exists(sub, root) else target))
    return list(dict.fromkeys(out))


def _exists(module: str, root: Path) -> bool:
    """``module`` (``msvision.a.b``) is a module or package of the tree at ``root``."""
    if not module.startswith("msvision."):
        return False
    rel = root.joinpath(*module.split(".")[1:])
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _head_unit(module: str) -> str | None:
    """``effseg`` of ``msvision.models.heads.effseg.head``; None outside a head (or for
    the ``heads`` package itself)."""
    prefix = "msvision.models.heads."
    if not module.startswith(prefix):
        return None
    return module[len(prefix):].split(".")[0]


def layering_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every import that breaks the rules of the module docstring, as ``file:line: a imports b``."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        head = _head_unit(source)
        for line, target in imported_modules(path, root):
            where = f"{path.relative_to(root.parent)}:{line}: {source} imports {target}"
            if head is not None and _within(target, "msvision.models.necks"):
                violations.append(f"{where} (a head imports a neck)")
            if _within(source, "msvision.models.necks") and _within(target, "msvision.models.heads"):
                violations.append(f"{where} (a neck imports a head)")
            other = _head_unit(target)
            if head is not None and other is not None and other != head:
                if head in SHARED_HEAD_PACKAGES or other not in SHARED_HEAD_PACKAGES:
                    violations.append(f"{where} (a head imports another head's modules)")
            if _within(source, "msvision.ops") and _within(target, "msvision.models"):
                violations.append(f"{where} (an op imports a model)")
    return violations


def test_models_and_ops_follow_the_layering():
    assert layering_violations() == []


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """The rules catch absolute, relative and function-level imports of the wrong room."""
    root = tmp_path / "msvision"
    files = {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/thing.py": "def f():\n    from msvision.models import layers\n",
        "models/__init__.py": "",
        "models/layers.py": "",
        "models/necks/__init__.py": "",
        "models/necks/base.py": "import msvision.models.heads.a.x\n",
        "models/heads/__init__.py": "from msvision.models.heads import a\n",
        "models/heads/roi_mask/__init__.py": "from ..a import x\n",
        "models/heads/a/__init__.py": "from . import x\nfrom msvision.models.heads.roi_mask import y\n",
        "models/heads/a/x.py": "from msvision.models.layers import Conv2d\nfrom ...necks import base\n",
        "models/heads/b.py": "from msvision.models.heads.a import x\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    found = sorted(v.split(": ", 1)[0] for v in layering_violations(root))
    assert found == ["msvision/models/heads/a/x.py:2", "msvision/models/heads/b.py:1",
                     "msvision/models/heads/roi_mask/__init__.py:1", "msvision/models/necks/base.py:1",
                     "msvision/ops/thing.py:2"]
