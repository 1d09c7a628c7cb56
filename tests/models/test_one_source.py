"""Facts stated once: the sampler presets' numbers appear as literals only in models/spec.py, and the facts every
stage asks the family spec (VAE scale, default size, Turbo's mu) agree with the models that carry them."""

import ast
import re
from pathlib import Path

import pytest

from weightshop.models.spec import KREA2, RAW, TURBO

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "weightshop"
# Raw's steps and guidance, Turbo's mu, the shift rule's top anchor, Raw's mu at 1024 px
PRESET_NUMBERS = {RAW.preset.steps, RAW.preset.guidance, TURBO.preset.mu, KREA2.shift.max_tokens, 0.906}
PRESET_WORDS = re.compile(r"\b(\d+ steps?\b|guidance \d|mu \d)")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def preset_literals(path: Path) -> list[str]:
    """Numbers of the presets written as literals in code, and strings (not docstrings) that spell a preset out."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docs:
            continue
        if type(node.value) in (int, float) and node.value in PRESET_NUMBERS:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
        elif isinstance(node.value, str) and PRESET_WORDS.search(node.value):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    return found


def test_preset_numbers_live_only_in_the_spec():
    files = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "models" / "spec.py"]
    found = [hit for path in files for hit in preset_literals(path)]
    assert found == []


def test_the_literal_check_finds_a_retyped_preset(tmp_path):
    planted = PACKAGE / "models" / "_planted_for_test.py"
    planted.write_text('"""Doc: 52 steps here is fine."""\nSTEPS = 52\nLABEL = "Raw (guidance 3.5)"\n')
    try:
        assert len(preset_literals(planted)) == 2
    finally:
        planted.unlink()


def test_family_facts_match_the_models_that_carry_them(tiny_dirs):
    from weightshop.models.loading import resolve_source
    from weightshop.models.shape import full_size_shape, model_shape

    full = full_size_shape()
    assert (full.vae_scale_factor, full.default_size, full.size_multiple) == (
        KREA2.vae_scale_factor, KREA2.default_size, KREA2.size_multiple())
    tiny = model_shape(str(tiny_dirs[0]))
    # the tiny VAE halves twice: its scale comes from its own config, never the family default
    assert tiny.vae_scale_factor == 4 and tiny.size_multiple == 8
    source = resolve_source(str(tiny_dirs[0]))
    assert tiny.default_size == source.default_size == source.defaults["default_size"]
    assert KREA2.vae_scale({"temperal_downsample": [False, True, True]}) == 8 and KREA2.vae_scale(None) == 8


@pytest.mark.parametrize("side", [512, 1024, 2048])
def test_turbo_mu_is_a_checkpoint_fact(side):
    assert TURBO.preset.mu_for(side, side) == TURBO.preset.mu
    assert RAW.preset.mu_for(side, side) == pytest.approx(KREA2.shift.mu((side // 16) ** 2))
