"""Import rules between the core's packages (a start of issue 18's layering)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_uad"


def _imports(path: Path) -> set[str]:
    """Absolute names of the napari_uad modules a file imports (relative imports resolved)."""
    module = ["napari_uad", *path.relative_to(PACKAGE).with_suffix("").parts]
    if module[-1] == "__init__":
        module = module[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module[: len(module) - node.level + (path.name == "__init__.py")]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_models_do_not_import_methods():
    """Models (checkpoints, configs, the registry) sit below the methods that use them."""
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if ".methods" in n)
        for path in (PACKAGE / "models").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_progress_module_needs_no_torch():
    code = "import sys, napari_uad.progress; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_progress_api_is_one_object_wherever_it_is_imported():
    from napari_uad import progress
    from napari_uad.methods import base

    assert base.Cancelled is progress.Cancelled and base.Progress is progress.Progress
    assert base.run_to_completion is progress.run_to_completion


def test_listed_models_carry_their_config(monkeypatch):
    """list_models reads each config once; the Detect widget's model line reuses it."""
    from napari_uad.models import checkpoint, registry
    from napari_uad.widgets.detect import model_description

    infos = registry.list_models()
    assert infos and all(info.config is not None for info in infos)

    def no_reads(*args, **kwargs):
        raise AssertionError("config.json read again")

    monkeypatch.setattr(checkpoint, "load_config", no_reads)
    monkeypatch.setattr(registry, "load_config", no_reads)
    for info in infos:
        assert registry.model_config(info) is info.config
        assert "unreadable" not in model_description(info, full=True)


#: Modules outside widgets/ that talk to napari: the npe2 contributions, and the demo that opens
#: the viewer (it also sizes the Qt window).
NAPARI_FACING = {"_napari.py", "demo.py"}


def test_only_widgets_and_the_napari_facing_modules_import_napari_or_qt():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "widgets" or str(relative) in NAPARI_FACING:
            continue
        gui = sorted(
            n
            for n in _imports(path)
            if n.split(".")[0] in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")
        )
        if gui:
            offenders[str(relative)] = gui
    assert not offenders
