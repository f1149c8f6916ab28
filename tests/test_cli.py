"""The command line's conventions: one config precedence rule, `config show/init`, `--version`, real choices,
and user errors as messages with an exit code, never tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from atlas_gan import __version__
from atlas_gan.cli import app
from atlas_gan.config import DEFAULT_CONFIG_PATH, load_config

runner = CliRunner()


def flat(output: str) -> str:
    """The output without rich's box drawing and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"atlas-gan {__version__}"


def test_config_precedence_is_file_then_environment_then_set(tmp_path, monkeypatch):
    monkeypatch.delenv("ATLAS_OVERRIDES", raising=False)
    monkeypatch.delenv("ATLAS_CONFIG", raising=False)
    shown = yaml.safe_load(runner.invoke(app, ["config", "show"]).output)
    assert shown["ingest"]["tile_size"] == 64  # the packaged default

    own = tmp_path / "own.yaml"
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["ingest"]["tile_size"] = 128
    data["train"]["steps"] = 11
    own.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ATLAS_CONFIG", str(own))  # the CLI honours it, as the flows do
    monkeypatch.setenv("ATLAS_OVERRIDES", json.dumps(["train.steps=22", "train.batch_size=8"]))
    result = runner.invoke(app, ["config", "show", "--set", "train.steps=33"])
    assert result.exit_code == 0, result.output
    assert f"# file: {own} (ATLAS_CONFIG)" in result.output and "# --set: train.steps=33" in result.output
    shown = yaml.safe_load(result.output)
    assert shown["ingest"]["tile_size"] == 128  # from ATLAS_CONFIG
    assert shown["train"]["batch_size"] == 8  # ATLAS_OVERRIDES over the file
    assert shown["train"]["steps"] == 33  # --set over ATLAS_OVERRIDES

    explicit = runner.invoke(app, ["config", "show", "--config", str(DEFAULT_CONFIG_PATH), "-f", "json"])
    assert json.loads(explicit.output)["ingest"]["tile_size"] == 64  # --config over ATLAS_CONFIG
    monkeypatch.setenv("ATLAS_OVERRIDES", "train.steps=1")
    broken = runner.invoke(app, ["config", "show"])
    assert broken.exit_code == 2 and "ATLAS_OVERRIDES must be a JSON list" in broken.output


def test_config_init_writes_a_commented_starter_that_loads(tmp_path):
    path = tmp_path / "conf" / "atlas.yaml"
    result = runner.invoke(app, ["config", "init", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text().startswith("# atlas-gan default pipeline configuration")
    assert load_config(path).ingest.tile_size == 64
    again = runner.invoke(app, ["config", "init", str(path)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert runner.invoke(app, ["config", "init", str(path), "--force"]).exit_code == 0


def test_every_command_runs_as_a_module_too(tmp_path):
    """`python -m atlas_gan.cli` (what torchrun launches) knows the commands defined last, `config show` included."""
    result = subprocess.run(
        [sys.executable, "-m", "atlas_gan.cli", "config", "show", "--format", "json", "--set", "train.steps=7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["train"]["steps"] == 7


def test_every_command_has_a_one_line_summary():
    """Typer's rich help keeps the line breaks of a command's first paragraph in the command list: one line each."""
    import inspect

    import typer.main

    group = typer.main.get_group(app)
    commands = [*group.commands.values(), *group.commands["config"].commands.values()]
    for command in commands:
        summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert summary and "\n" not in summary and len(summary) <= 105, (command.name, summary)


def test_choices_are_checked_by_the_parser():
    result = runner.invoke(app, ["export", "-m", "x.pt", "--out", "x.onnx", "--format", "zip"])
    assert result.exit_code == 2 and "'zip' is not one of 'onnx', 'torchscript'" in flat(result.output)
    result = runner.invoke(app, ["sample", "-m", "x.pt", "--values", "raw"])
    assert result.exit_code == 2 and "'raw' is not one of 'physical', 'model'" in flat(result.output)


def test_unwritable_outputs_fail_before_any_work_without_a_traceback(geotiff, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    report = blocker / "report.json"  # its folder cannot exist: a file is in the way
    output = tmp_path / "out"
    scene = str(geotiff / "tests" / "rgb16.tif")
    result = runner.invoke(app, ["ingest", "-s", scene, "-o", str(output), "-q", "--report", str(report)])
    assert result.exit_code == 2 and "--report" in result.output and "cannot create its folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not output.exists(), "nothing is ingested when the report could not be written"

    result = runner.invoke(
        app, ["ingest", "-s", scene, "-o", str(output), "-q", "--report", str(tmp_path / "r/r.json")]
    )
    assert result.exit_code == 0 and json.loads((tmp_path / "r" / "r.json").read_text())["wrote"] is True

    result = runner.invoke(app, ["preview", str(output), "--out", str(blocker / "tiles.png")])
    assert result.exit_code == 2 and "--out" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["preview", str(output), "--count", "4", "--out", str(tmp_path / "new" / "t.png")])
    assert result.exit_code == 0 and (tmp_path / "new" / "t.png").read_bytes()[:4] == b"\x89PNG"
