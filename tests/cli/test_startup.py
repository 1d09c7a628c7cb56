"""Start-up: --help of every command imports no heavy library; --device auto; no import noise on stderr."""

import json
import subprocess
import sys
import textwrap

import pytest

from weightshop.errors import WeightshopError

HEAVY = ("torch", "gguf", "diffusers", "transformers", "peft", "accelerate", "numpy")

# Walks the click tree typer builds, so a command or group added later is covered without editing this list.
HELP_EVERYWHERE = textwrap.dedent("""
    import contextlib, io, json, sys

    import typer

    from weightshop.cli import main as cli

    heavy_names = set(sys.argv[1:])

    def paths(command, prefix=()):
        yield prefix
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from paths(sub, prefix + (name,))

    seen, failed = [], []
    for path in paths(typer.main.get_command(cli.app)):
        sys.argv = ["weightshop", *path, "--help"]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                cli.main()
        except SystemExit as e:
            if e.code not in (0, None):
                failed.append([*path, e.code])
        if "Usage" not in out.getvalue():
            failed.append([*path, "no usage"])
        seen.append(" ".join(path))
    heavy = sorted({m.split(".")[0] for m in sys.modules} & heavy_names)
    print(json.dumps({"seen": seen, "failed": failed, "heavy": heavy}))
""")


def test_help_of_every_command_imports_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE, *HEAVY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == []
    assert result["heavy"] == [], f"--help imported {result['heavy']}"
    # The walk reached groups and their subcommands, not only the top level.
    for path in ("", "lora", "lora inspect", "data check", "transfer", "bench train", "nano build", "generate"):
        assert path in result["seen"]
    assert done.stderr == ""


def test_device_options_default_to_auto():
    import typer

    from weightshop.cli.main import app

    def commands(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from commands(sub)

    defaults = {c.name: p.default for c in commands(typer.main.get_command(app))
                for p in getattr(c, "params", []) if p.name == "device"}
    assert {"generate", "transfer", "cache"} <= set(defaults)
    assert set(defaults.values()) == {"auto"}


def test_resolve_device():
    import torch

    from weightshop.cli.common import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "cuda:x", "", "meta"):
        with pytest.raises(WeightshopError, match=r"--device .*expected auto .*cpu, cuda or cuda:N") as err:
            resolve_device(bad)
        assert repr(bad) in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(WeightshopError, match=r"--device 'cuda:1': CUDA is not available.*--device cpu or auto"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(WeightshopError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_bad_device_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from weightshop.cli.main import app

    manifest = tmp_path / "dataset.json"
    manifest.write_text("{}")
    result = CliRunner().invoke(app, ["data", "cache", str(manifest), "--device", "gpu"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --device 'gpu': expected auto (cuda when available, else cpu), cpu, "
                                     "cuda or cuda:N")


def test_library_import_noise_is_silenced():
    """The libraries weightshop imports print nothing at import time once quiet_libraries ran; a filtered logger
    still speaks (only the listed noise is dropped)."""
    code = ("from weightshop.cli.common import IMPORT_NOISE, quiet_libraries\n"
            "quiet_libraries()\n"
            "import logging, gguf, peft, diffusers, transformers\n"
            "logging.getLogger(next(iter(IMPORT_NOISE))).warning('still speaks')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.strip().splitlines()  # nothing but the one record
    assert line.endswith("still speaks")  # torch's loggers prefix their records


def test_a_command_that_imports_peft_prints_no_noise():
    """plan imports peft; with --json its stderr holds nothing."""
    done = subprocess.run([sys.executable, "-m", "weightshop.cli.main", "plan", "--gpu", "24GB", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)
    assert done.stderr == ""
