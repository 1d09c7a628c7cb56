"""Prompt suites: the YAML schema, the shipped suites, triggers and seed sets."""

import pytest

from weightshop.errors import WeightshopError
from weightshop.eval.suites import SHIPPED, load_suite, nano_suite, shipped_suites, suite_jobs, write_suite


def test_shipped_suites_load_and_the_nano_ones_are_what_the_generator_makes():
    assert {"krea2", "krea2-nano-star", "krea2-nano-striped"} <= set(shipped_suites())
    krea2 = load_suite("krea2")
    tags = {t for p in krea2.prompts for t in p.tags}
    assert {"subject", "style", "no-trigger", "no-text", "composition"} <= tags
    for concept in ("star", "striped"):
        assert load_suite(f"krea2-nano-{concept}").digest() == nano_suite(concept).digest()  # one source: the code
    star = load_suite("krea2-nano-star")
    assert all(p.scene for p in star.prompts)
    assert sum("no-trigger" in p.tags for p in star.prompts) == 12


def test_trigger_goes_on_subject_prompts_only_and_seed_sets_shift(tmp_path):
    suite = load_suite("krea2")
    jobs = suite_jobs(suite, trigger="zq style")
    subject = [j for j in jobs if "subject" in j.tags or "style" in j.tags]
    plain = [j for j in jobs if "no-trigger" in j.tags]
    assert all(j.prompt.startswith("zq style") for j in subject) and not any("zq" in j.prompt for j in plain)
    second = suite_jobs(suite, seed_offset=1000)
    assert [j.seed - 1000 for j in second] == [j.seed for j in suite_jobs(suite)]
    assert [j.pair_key for j in second] == [j.pair_key for j in suite_jobs(suite)]  # pairs across seed sets


@pytest.mark.parametrize("text, error", [
    ("name: x\nprompts: [{id: a, prompt: p}, {id: a, prompt: q}]\n", "prompt ids must be unique"),
    ("name: x\nprompts: [{id: a, prompt: p, tags: [Subject]}]\n", "tags must be lower-case words"),
    ("name: x\nprompts: [{id: a, prompt: p, tags: [subject, no-trigger]}]\n", "cannot be both no-trigger"),
    ("name: x\nprompts: []\n", "prompts"),
    ("name: x\nprompts: [{id: a, promt: p}]\n", "promt"),
])
def test_bad_suites_name_the_field(tmp_path, text, error):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(WeightshopError, match=error):
        load_suite(path)


def test_unknown_suite_names_the_shipped_ones_and_export_round_trips(tmp_path):
    with pytest.raises(WeightshopError, match="krea2-nano-star"):
        load_suite("nope")
    write_suite(load_suite("krea2"), tmp_path / "mine.yaml")
    assert load_suite(tmp_path / "mine.yaml").digest() == load_suite("krea2").digest()
    assert (SHIPPED / "krea2.yaml").is_file()
