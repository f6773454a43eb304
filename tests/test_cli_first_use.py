"""The first minutes of a new user: fast answers, and a README that matches the command."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_uad.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = [["--help"], ["--version"], ["restore", "--help"], ["train", "--help"], ["restore"]]


@pytest.mark.parametrize("args", QUICK, ids=" ".join)
def test_help_version_and_usage_errors_answer_without_torch(args):
    # Measured on a quiet 2-core machine: 0.05 s each (5 s before torch was imported lazily).
    # The bar is loose so that a busy machine does not fail it; torch must not be imported.
    code = (
        "import sys, time; t = time.perf_counter(); from napari_uad.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, time.perf_counter() - t, file=sys.stderr)"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - started
    assert "TORCH False" in result.stderr, result.stderr[-500:]
    assert elapsed < 3.0, f"napari-uad {' '.join(args)} took {elapsed:.2f} s"


def _readme_synopsis() -> dict[str, set[str]]:
    """Options of each command in the README's "Command line" block."""
    text = README.read_text()
    block = text.split("## Command line", 1)[1].split("```", 2)[1]
    commands: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"napari-uad (\w+)", line.strip())
        if match:
            current = match.group(1)
            commands.setdefault(current, set())
        if current:
            commands[current].update(re.findall(r"--[a-z][a-z0-9-]*", line))
    return commands


def test_readme_synopsis_matches_the_parser():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    synopsis = _readme_synopsis()
    assert set(synopsis) == set(subparsers), "README lists other commands than the CLI has"
    for command, options in synopsis.items():
        known = {o for action in subparsers[command]._actions for o in action.option_strings}
        assert options <= known, f"{command}: README options {options - known} do not exist"
        if command == "restore":
            # Every restore option is in the README (the issue found --erode-brain missing).
            assert known - {"-h", "--help"} <= options, known - options


def test_readme_commands_use_existing_options():
    """Every `napari-uad ...` line in a README code block parses."""
    parser = build_parser()
    text = README.read_text()
    lines = [
        line.strip()
        for block in text.split("```")[1::2]
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("napari-uad ") and "[" not in line and "..." not in line
    ]
    assert lines, "no command lines found in the README"
    for line in lines:
        words = line.split("#")[0].split()[1:]
        parser.parse_args(words)  # raises SystemExit on an unknown option


def test_restore_says_what_it_loads_in_a_terminal(
    tiny_model_dir, phantom_scan_files, tmp_path, capsys, monkeypatch
):
    from napari_uad.cli import main

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    scan = str(phantom_scan_files["scan"])
    out = tmp_path / "o"
    args = ["restore", scan, "--method", "anoddpm", "--model", str(tiny_model_dir), "--out"]
    assert main([*args, str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    loading, reading = err.index("loading the anoddpm model"), err.index(f"reading {scan}")
    assert loading < reading


def test_restore_with_a_missing_model_leaves_no_output_folder(phantom_scan_files, tmp_path):
    from napari_uad.cli import main

    out = tmp_path / "never"
    scan = str(phantom_scan_files["scan"])
    args = ["restore", scan, "--method", "anoddpm", "--model", str(tmp_path / "no-such-model")]
    assert main([*args, "--out", str(out)]) == 2
    assert not out.exists()
