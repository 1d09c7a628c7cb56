"""Facts stated once: the sampler presets' numbers appear as literals only in models/spec.py, and the facts every
stage asks the family spec (VAE scale, default size, Turbo's mu) agree with the models that carry them."""

import ast
import re
from pathlib import Path

import pytest

from weightshop.models.spec import KREA2, RAW, TURBO

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "weightshop"
# Raw's and Turbo's steps, Raw's guidance, Turbo's mu, the shift rule's top anchor, Raw's mu at 1024 px
PRESET_NUMBERS = {RAW.preset.steps, TURBO.preset.steps, RAW.preset.guidance, TURBO.preset.mu, KREA2.shift.max_tokens,
                  0.906}
PRESET_WORDS = re.compile(r"\b(\d+ steps?\b|guidance \d|mu \d)")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


PRESET_NAMES = re.compile(r"(^|_)(steps|guidance|guidance_scale|mu)$", re.IGNORECASE)


def _numbers_given_to_preset_names(tree: ast.AST):
    """(node, name) for numbers bound to a name that says steps, guidance or mu: keyword arguments,
    assignments, annotated fields and parameter defaults."""
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.keyword) and node.arg:
            pairs.append((node.arg, node.value))
        elif isinstance(node, ast.Assign):
            pairs += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            pairs.append((node.target.id, node.value))
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            pairs += list(zip([a.arg for a in args[len(args) - len(node.defaults):]], node.defaults))
            pairs += [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
        for name, value in pairs:
            if PRESET_NAMES.search(name) and isinstance(value, ast.Constant) and type(value.value) in (int, float):
                yield value, name


def preset_literals(path: Path) -> list[str]:
    """Preset numbers written as literals where a steps/guidance/mu value is given, and strings (not
    docstrings) that spell a preset out ("52 steps", "guidance 3.5", "mu 1.15")."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = [f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}={node.value!r}"
             for node, name in _numbers_given_to_preset_names(tree) if node.value in PRESET_NUMBERS]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docs and isinstance(node.value, str) \
                and PRESET_WORDS.search(node.value):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    return found


def test_preset_numbers_live_only_in_the_spec():
    files = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "models" / "spec.py"]
    found = [hit for path in files for hit in preset_literals(path)]
    assert found == []


def test_the_literal_check_finds_a_retyped_preset(tmp_path):
    planted = PACKAGE / "models" / "_planted_for_test.py"
    planted.write_text('"""Doc: 52 steps here is fine."""\nSTEPS = 52\nLABEL = "Raw (guidance 3.5)"\n'
                       'def f(x, mu=1.15):\n    return g(guidance=3.5, scale=3.5 * x)\nSPAN = 1.15\n')
    try:
        assert len(preset_literals(planted)) == 4  # STEPS, the label, mu=, guidance=; not scale or SPAN
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
