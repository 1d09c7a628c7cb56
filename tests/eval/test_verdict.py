"""The production verdict: Turbo when it keeps Raw's concept and adherence within the tolerance and nothing flags
it, Raw otherwise, neither when the LoRA brings nothing; priced per image."""

from weightshop.eval.verdict import Option, decide


def opt(checkpoint, concept, lift, adherence, seconds=1.0):
    return Option(checkpoint, 1.0, concept, lift, adherence, seconds, seconds * 2.5 / 3600)


def test_turbo_when_it_keeps_up_with_raw():
    v = decide(opt("raw", 0.70, 0.68, 0.90, 6.0), opt("turbo", 0.67, 0.66, 0.88, 0.5), {}, {})
    assert v.choice == "turbo" and "Turbo + LoRA is good enough" in v.headline()
    assert any("12.0x" in r for r in v.reasons)


def test_raw_when_turbo_loses_the_concept_or_adherence_or_is_flagged():
    assert decide(opt("raw", 0.70, 0.68, 0.90), opt("turbo", 0.50, 0.49, 0.90), {}, {}).choice == "raw"
    assert decide(opt("raw", 0.70, 0.68, 0.90), opt("turbo", 0.70, 0.69, 0.80), {}, {}).choice == "raw"
    flagged = decide(opt("raw", 0.70, 0.68, 0.90), opt("turbo", 0.70, 0.69, 0.90),
                     {"turbo": ["memorising: 3 of ..."]}, {})
    assert flagged.choice == "raw" and flagged.flags == ["turbo: memorising: 3 of ..."]
    # a measured noise floor widens the tolerance: the same gap is then within it
    assert decide(opt("raw", 0.70, 0.68, 0.90), opt("turbo", 0.62, 0.60, 0.90), {},
                  {"concept": 0.1}).choice == "turbo"


def test_neither_when_the_lora_brings_nothing():
    v = decide(opt("raw", 0.03, 0.01, 0.90), opt("turbo", 0.02, 0.0, 0.90), {}, {})
    assert v.choice == "neither" and "does not bring its concept" in v.headline()


def test_a_flag_both_checkpoints_share_is_the_loras_problem_not_turbos():
    bleed = "concept bleed: the concept shows in 30 % ..."
    v = decide(opt("raw", 0.60, 0.58, 0.90), opt("turbo", 0.62, 0.60, 0.90), {"raw": [bleed], "turbo": [bleed]}, {})
    assert v.choice == "turbo" and any("both checkpoints are flagged for concept bleed" in r for r in v.reasons)
    assert len(v.flags) == 2


def test_a_memorising_lora_is_stopped_whichever_checkpoint_would_serve_it():
    memo = "memorising: 2 of the generations are near copies of training images"
    v = decide(opt("raw", 0.60, 0.58, 0.90), opt("turbo", 0.62, 0.60, 0.90), {"raw": [memo], "turbo": [memo]}, {})
    assert v.choice == "neither" and "fix the LoRA first: it is flagged for memorising" in v.headline()
    only_turbo = decide(opt("raw", 0.60, 0.58, 0.90), opt("turbo", 0.62, 0.60, 0.90), {"turbo": [memo]}, {})
    assert only_turbo.choice == "raw"
