"""The krea2-nano recipe: a few-step smoke run of every stage, exact resume, integrity, probe scoring."""

from dataclasses import replace

import json

import pytest
import torch

from weightshop.models import builtin
from weightshop.nano import world
from weightshop.nano.build import Build, run_build, smoke_recipe
from weightshop.nano.probe import ProbeRecipe, canonical, labels, relevant, score, train_probe


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("nano")
    record = run_build(root / "work", root / "weights", smoke=True)
    return root, record


def test_every_stage_runs_and_is_recorded(smoke):
    root, record = smoke
    assert list(record["stages"]) == ["world", "vae", "text", "probe", "raw", "turbo", "package", "card"]
    assert (root / "weights" / "MODEL_CARD.md").read_text().count("| nano-") == 3
    quality = json.loads((root / "weights" / "quality.json").read_text())
    assert [r["setting"].split(" (")[0] for r in quality["rows"]] == ["nano-Raw preset", "nano-Raw 8 steps, no guidance",
                                                                       "nano-Turbo preset"]


def test_packaged_family_loads_through_the_standard_loaders(smoke):
    from diffusers import Krea2Pipeline

    from weightshop.models.loading import load_pair

    root, _ = smoke
    pair = load_pair(root / "weights" / "krea2-nano-raw", root / "weights" / "krea2-nano-turbo", dtype="fp32")
    assert pair.turbo.pipeline.config.is_distilled and not pair.raw.pipeline.config.is_distilled
    assert pair.raw.default_size == 64 and pair.raw.size_multiple == 8
    direct = Krea2Pipeline.from_pretrained(root / "weights" / "krea2-nano-turbo")
    assert direct.config.is_distilled and direct.vae_scale_factor == 4
    # Turbo's shared components are links to Raw's: stored once, like the real release's shared VAE/encoder
    assert (root / "weights" / "krea2-nano-turbo" / "vae").is_symlink()
    checksums = json.loads((root / "weights" / "checksums.json").read_text())
    assert checksums["links"]["krea2-nano-turbo/vae"] == "../krea2-nano-raw/vae"
    assert not any(f.startswith("krea2-nano-turbo/vae/") for f in checksums["files"])


def test_checksums_detect_a_changed_file(smoke, tmp_path):
    import shutil

    root, _ = smoke
    copy = tmp_path / "weights"
    shutil.copytree(root / "weights", copy, symlinks=True)
    assert builtin.verify(copy) == []
    followed = tmp_path / "followed"  # what cp -r or a wheel makes of the links: real copies, still intact
    shutil.copytree(root / "weights", followed)
    assert not (followed / "krea2-nano-turbo" / "vae").is_symlink() and builtin.verify(followed) == []
    target = next((copy / "krea2-nano-raw" / "transformer").glob("*.safetensors"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert builtin.verify(copy) == [f"krea2-nano-raw/transformer/{target.name}: sha256 mismatch"]
    (copy / "krea2-nano-turbo" / "tokenizer").unlink()
    assert "krea2-nano-turbo/tokenizer: missing (should link to ../krea2-nano-raw/tokenizer)" in builtin.verify(copy)


def test_finished_stages_are_skipped(smoke):
    root, record = smoke
    again = run_build(root / "work", root / "weights", smoke=True)
    assert again["stages"]["raw"]["finished"] == record["stages"]["raw"]["finished"]


def test_redo_forgets_a_stage_and_every_later_one(smoke, tmp_path):
    import shutil

    root, record = smoke
    work = tmp_path / "work"
    shutil.copytree(root / "work", work, symlinks=True)
    assert (work / "turbo_state.json").is_file()
    build = Build(work, tmp_path / "weights", smoke_recipe(), redo="turbo")
    assert set(build.record["stages"]) == {"world", "vae", "text", "probe", "raw"}
    assert "turbo" not in build.record["started"] and not (work / "turbo_state.json").exists()
    again = build.run()
    assert {"turbo", "package", "card"} <= set(again["stages"])
    assert again["stages"]["raw"]["finished"] == record["stages"]["raw"]["finished"]
    with pytest.raises(Exception, match="expected one of world"):
        Build(work, tmp_path / "weights", smoke_recipe(), redo="polish")


def test_raw_pretraining_resumes_exactly(smoke, tmp_path):
    """Interrupted after 1 step and resumed equals 2 uninterrupted steps, weights and EMA alike."""
    import shutil

    from weightshop.nano.pretrain import train_raw

    root, _ = smoke
    recipe = smoke_recipe()
    results = []
    for name, stops in (("straight", [2]), ("resumed", [1, 2])):
        work = tmp_path / name
        (work / "final").mkdir(parents=True)
        for part in ("vae", "text_encoder", "tokenizer"):
            shutil.copytree(root / "work" / "final" / part, work / "final" / part)
        build = Build(work, tmp_path / "out", recipe)
        for stop in stops:
            pipe = build._pipeline(build._fresh_transformer())
            ema, info = train_raw(work, pipe, recipe.text.max_sequence_length, recipe.transformer, max_steps=stop)
        results.append((pipe.transformer.state_dict(), ema.state_dict(), info["history"]))
    (a, ea, _), (b, eb, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_probe_training_resumes_exactly(tmp_path):
    recipe = ProbeRecipe(width=8, batch=4, steps=4)
    straight, _ = train_probe(tmp_path / "a", recipe)
    train_probe(tmp_path / "b", recipe, max_steps=2)
    resumed, info = train_probe(tmp_path / "b", recipe)
    assert info["step"] == 4
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_started_stage_with_another_recipe_is_refused(smoke, tmp_path):
    from weightshop.errors import WeightshopError

    root, _ = smoke
    recipe = smoke_recipe()
    with pytest.raises(WeightshopError, match="stage 'raw' was started with another recipe"):
        Build(root / "work", root / "weights", replace(recipe, transformer=replace(recipe.transformer, lr=1.0)))
    # a stage that has not started yet may still change
    fresh = tmp_path / "fresh"
    Build(fresh, tmp_path / "w", recipe).run(("world",))
    Build(fresh, tmp_path / "w", replace(recipe, transformer=replace(recipe.transformer, lr=1.0)))


# --- the probe's labels and scores -----------------------------------------------------------------


def _scene(relation):
    a = world.ObjectSpec("circle", "red", "large", "solid")
    b = world.ObjectSpec("square", "blue", "small", "solid")
    return world.Scene((a, b), "gray", relation=relation, seed=3)


def test_canonical_reading_of_two_object_scenes():
    right = canonical(_scene("right of"))
    assert right.relation == "left of" and right.objects[0].shape == "square"
    assert canonical(_scene("left of")) == _scene("left of")
    below = labels(_scene("below"))
    assert (below["relation"], below["shape"], below["shape2"]) == ("above", "square", "circle")
    # the two phrasings of one picture get one label set
    assert labels(_scene("right of"))["colour"] == "blue"


def test_score_counts_only_what_a_prompt_specifies():
    one = world.Scene((world.ObjectSpec("star", "red", "small", "striped"),), "black", position="left", seed=1)
    two = _scene("left of")
    truth_one, truth_two = labels(one), labels(two)
    wrong_relation = dict(truth_two, relation="above")
    wrong_size_in_two = dict(truth_two, size="small")  # size is not judged for two-object prompts
    missed_star = dict(truth_one, shape="circle")
    result = score([truth_one, wrong_relation, wrong_size_in_two, missed_star], [one, two, two, one])
    assert result["acc_relation"] == pytest.approx(1 / 2)  # judged on the two two-object scenes only
    assert result["acc_shape"] == pytest.approx(3 / 4)
    assert result["all_correct"] == pytest.approx(2 / 4)
    # concept hits: star found in 1 of 2 star scenes; striped fill found in both striped scenes
    assert result["concept_hit_rate"] == pytest.approx(3 / 4)
    assert set(relevant(truth_one)) >= {"position", "size"} and "relation" not in relevant(truth_one)


def test_committed_probe_meets_its_accuracy_target():
    if not builtin.installed():
        pytest.skip("krea2-nano weights not built yet (weightshop nano build)")
    from weightshop.nano.probe import load_probe
    from weightshop.nano.probe import clean_accuracy

    accuracy = clean_accuracy(load_probe(builtin.PROBE_DIR), n=300)
    assert min(accuracy.values()) >= 0.98, accuracy


def test_a_probe_from_another_world_is_refused_by_name(smoke, tmp_path):
    """A probe whose label space is not this world's (another family's shapes, say) would load with mismatched heads
    or read labels off by one: it is refused, naming the file and the labels that differ."""
    import shutil

    from weightshop.errors import WeightshopError
    from weightshop.nano.probe import load_probe

    root, _ = smoke
    shutil.copytree(root / "weights" / "probe", tmp_path / "probe")
    assert load_probe(tmp_path / "probe").heads["shape"].out_features == len(world.ATTRIBUTE_VALUES["shape"])
    config = json.loads((tmp_path / "probe" / "config.json").read_text())
    config["attributes"]["shape"] = ["circle", "square", "star"]
    (tmp_path / "probe" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightshopError, match=r"config.json: this probe was trained for another shapes world: shape: "
                                              r"probe \['circle', 'square', 'star'\], this world \['circle'"):
        load_probe(tmp_path / "probe")
    del config["attributes"]
    (tmp_path / "probe" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightshopError, match="no 'attributes'"):
        load_probe(tmp_path / "probe")


def test_single_frame_vae_paths_match_diffusers_and_can_be_switched_off():
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageRMS_norm

    from weightshop.models.qwen_vae import as_shipped, use_fast_paths
    from weightshop.models.tiny import tiny_vae

    vae = tiny_vae()
    x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = vae.decode(vae.encode(x).latent_dist.mode()).sample
        assert use_fast_paths(vae) > 10 and use_fast_paths(vae) == 0
        fast = vae.decode(vae.encode(x).latent_dist.mode()).sample
        with as_shipped(vae):
            shipped = vae.decode(vae.encode(x).latent_dist.mode()).sample
        again = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert torch.equal(shipped, reference)  # the library's own forwards inside as_shipped
    assert torch.allclose(reference, fast, atol=1e-5) and not torch.equal(reference, fast)
    assert torch.equal(again, fast)  # and the fast paths back after it
    norm = next(m for m in vae.modules() if isinstance(m, QwenImageRMS_norm))
    y = torch.randn(2, norm.gamma.shape[0], 1, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad(), as_shipped(vae):
        expected = norm(y)
    with torch.no_grad():
        assert norm(y).dtype == expected.dtype
        assert (norm(y).float() - expected.float()).abs().max() <= 1e-2 * expected.float().abs().max()
        zeros = torch.zeros(1, norm.gamma.shape[0], 1, 2, 2)
        assert torch.equal(norm(zeros), zeros)  # the eps keeps 0 / 0 out, as F.normalize does


def test_committed_family_is_intact_and_loads():
    if not builtin.installed():
        pytest.skip("krea2-nano weights not built yet (weightshop nano build)")
    from weightshop.models.loading import load_model

    assert builtin.verify() == []
    manifest = json.loads((builtin.WEIGHTS / builtin.CHECKSUMS).read_text())
    assert manifest["total_bytes"] <= 40 * 2**20
    turbo = load_model("krea2-nano-turbo", dtype="fp32")
    assert turbo.checkpoint.name == "turbo" and turbo.pipeline.config.is_distilled
    assert load_model("krea2-nano", dtype="fp32").checkpoint.name == "raw"


def test_demo_runs_on_a_packaged_nano_family(smoke, tmp_path):
    from weightshop.demo import run_demo

    root, _ = smoke
    summary = run_demo(tmp_path, prompts=2, nano_root=root / "weights", quick=True)
    assert summary["model"] == "krea2-nano"
    rows = summary["stages"]["generate"]["table"]
    assert [r["setting"].split(" (")[0] for r in rows] == ["nano-Raw preset", "nano-Raw 8 steps, no guidance",
                                                           "nano-Turbo preset"]
    assert all(0.0 <= r["all_correct"] <= 1.0 and "acc_shape" in r for r in rows)
    assert (tmp_path / "report.html").read_text().count("<img") == 2  # the comparison grid and the drift plot
    # curation catches every planted fault, and the images left out are the three marked ones, no others (6 star
    # images whose points sat at the same place were flagged too before the mark check's lone-cell and shift rules)
    curate = summary["stages"]["curate"]
    assert summary["concept"] == "star" and all(curate["planted_faults_caught"].values())
    assert curate["excluded"] == ["star_003.png", "star_004.png", "star_005.png"]
    # on a nano family the probe judges the transfer: concept and adherence for every setting
    transfer = summary["stages"]["transfer"]
    assert "probe" in transfer["scorers"] and "raw_adherence_drop_points" in transfer["lora_figures"]


def test_the_recipes_text_encoder_binds_and_keeps_words_apart(tmp_path):
    """The first full build's LM-trained encoder moved its features by 2.6 % between 'red' and 'blue' captions and
    nano-Raw never learned colour; the random init after it kept words apart but did not bind them (Raw v2 drew two
    objects' attributes at chance). The recipe's encoder must do both: read the scene out by spatial slot from
    captions it never saw, whichever object the caption names first, and separate one-word changes clearly."""
    from weightshop.nano.text import TextRecipe, build_tokenizer, train_text_encoder, word_separation

    recipe = replace(TextRecipe(), steps=300, batch=32)  # half the recipe's steps of half its batch: ~25 s
    tokenizer = build_tokenizer(recipe)
    encoder, info = train_text_encoder(tmp_path, tokenizer, recipe)
    assert info["step"] == recipe.steps
    # the full recipe reaches 100 % (docs/benchmarks/nano-build-v3.json); chance over the heads is about 30 %
    assert info["heldout_readout_accuracy"] > 0.85
    colour = word_separation(encoder, tokenizer, recipe.select_layers)
    shape = word_separation(encoder, tokenizer, recipe.select_layers,
                            "a large solid red {} in the middle, black background", ("circle", "square"))
    assert min(colour, shape) > 0.15
    # and the measure itself is sensitive: identical words give zero
    assert word_separation(encoder, tokenizer, recipe.select_layers, words=("red", "red")) == 0.0


def test_readout_targets_follow_the_picture_not_the_caption_order():
    from weightshop.nano.text import READOUT, readout_targets

    red_circle = world.ObjectSpec("circle", "red", "small", "solid")
    blue_square = world.ObjectSpec("square", "blue", "large", "solid")
    names = lambda scene: {k: READOUT[k][v] for k, v in readout_targets(scene).items()}  # noqa: E731
    right = names(world.Scene((red_circle, blue_square), "black", relation="right of", seed=1))
    assert (right["shape1"], right["colour1"], right["size1"]) == ("square", "blue", "large")
    assert (right["shape2"], right["colour2"], right["layout"]) == ("circle", "red", "horizontal")
    left = names(world.Scene((red_circle, blue_square), "black", relation="left of", seed=1))
    assert (left["colour1"], left["colour2"]) == ("red", "blue")
    below = names(world.Scene((red_circle, blue_square), "navy", relation="below", seed=1))
    assert (below["colour1"], below["layout"], below["background"]) == ("blue", "vertical", "navy")
    one = names(world.Scene((red_circle,), "black", position="top", seed=1))
    assert (one["shape2"], one["colour2"], one["size2"], one["layout"]) == ("none", "none", "none", "top")


def test_a_workdir_without_its_caches_samples_the_same_scenes(smoke, tmp_path):
    """A build carried to another machine without raw_scenes.json / raw_latents.safetensors (hundreds of MB)
    resumes Turbo on the very scenes Raw was trained on."""
    import shutil

    root, _ = smoke
    work = tmp_path / "work"
    shutil.copytree(root / "work", work, symlinks=True)
    build = Build(work, tmp_path / "weights", smoke_recipe())
    cached = build._scenes()
    (work / "raw_scenes.json").unlink()
    again = build._scenes()
    assert len(again) == smoke_recipe().transformer.dataset_scenes and again == cached


def test_a_carried_build_goes_on_where_it_stopped(smoke, tmp_path):
    """`nano carry` copies results and the running stage's state, not caches: the copy redoes nothing finished
    and resumes the stage in progress."""
    import shutil

    from weightshop.io import atomic_write_json

    root, record = smoke
    work = tmp_path / "work"
    shutil.copytree(root / "work", work, symlinks=True)
    build = Build(work, tmp_path / "weights", smoke_recipe(), redo="turbo")
    build.run(("turbo",))  # the smoke Turbo is one trajectory: finished, so interrupt it by hand
    build.record["stages"].pop("turbo")
    atomic_write_json(build.record_path, build.record)
    carried = build.carry(tmp_path / "carried")
    assert "turbo_state.safetensors" in carried and "raw_state.safetensors" not in carried
    assert not any(name.startswith("raw_latents") or name.startswith("raw_scenes") for name in carried)
    again = Build(tmp_path / "carried", tmp_path / "weights2", smoke_recipe()).run()
    assert again["stages"]["raw"]["finished"] == record["stages"]["raw"]["finished"]
    assert {"turbo", "package", "card"} <= set(again["stages"])


def _continuing(root):
    """The smoke recipe, its Raw continuing the smoke family's."""
    from weightshop.io import sha256_file

    sha = sha256_file(root / "weights" / "krea2-nano-raw" / "transformer" / "diffusion_pytorch_model.safetensors")
    recipe = smoke_recipe()
    return replace(recipe, transformer=replace(recipe.transformer, warm_start=sha))


def test_a_seeded_build_continues_the_familys_raw(smoke, tmp_path):
    """`nano seed` takes world/vae/text/probe from a packaged family as finished stages and its Raw as the warm start:
    the next run redoes none of them and Raw begins from exactly the family's weights."""
    from diffusers import Krea2Transformer2DModel

    root, record = smoke
    build = Build(tmp_path / "work", tmp_path / "weights", _continuing(root))
    assert build.seed_from(root / "weights", record) == ["world", "vae", "text", "probe"]
    start = build.raw_start()
    family_raw = Krea2Transformer2DModel.from_pretrained(root / "weights" / "krea2-nano-raw" / "transformer")
    fresh = build._fresh_transformer()
    for (name, a), b, c in zip(start.state_dict().items(), family_raw.state_dict().values(),
                               fresh.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b.float()), name
    assert any(not torch.equal(a, c) for a, c in zip(start.state_dict().values(), fresh.state_dict().values()))
    again = Build(tmp_path / "work", tmp_path / "weights", _continuing(root)).run(("world", "vae", "text", "probe", "raw"))
    for stage in ("world", "vae", "text", "probe"):
        assert again["stages"][stage]["finished"] == record["stages"][stage]["finished"]
    assert again["stages"]["raw"]["steps"] == smoke_recipe().transformer.steps


def test_seeding_refuses_what_would_not_match(smoke, tmp_path):
    from weightshop.errors import WeightshopError

    root, record = smoke
    other = json.loads(json.dumps(record))
    other["recipe"]["vae"]["steps"] += 1
    with pytest.raises(WeightshopError, match="'vae' recipe differs"):
        Build(tmp_path / "a", tmp_path / "w", _continuing(root)).seed_from(root / "weights", other)
    with pytest.raises(WeightshopError, match="not a packaged nano family"):
        Build(tmp_path / "b", tmp_path / "w", _continuing(root)).seed_from(tmp_path, record)
    with pytest.raises(WeightshopError, match="a build has started here"):
        Build(root / "work", tmp_path / "w", smoke_recipe()).seed_from(root / "weights", record)
    unseeded = Build(tmp_path / "c", tmp_path / "w", _continuing(root))
    with pytest.raises(WeightshopError, match="weightshop nano seed"):
        unseeded.raw_start()
    # a changed text recipe seeds the rest and leaves the text encoder for the build to redo
    changed_text = json.loads(json.dumps(record))
    changed_text["recipe"]["text"]["steps"] += 1
    partial = Build(tmp_path / "e", tmp_path / "w", _continuing(root))
    assert partial.seed_from(root / "weights", changed_text) == ["world", "vae", "probe"]
    assert "text" not in partial.record["stages"] and not (partial.final / "text_encoder").exists()
    assert (partial.final / "vae").is_dir() and (tmp_path / "e" / "warm_start").is_dir()
    wrong = replace(smoke_recipe(), transformer=replace(smoke_recipe().transformer, warm_start="0" * 64))
    seeded = Build(tmp_path / "d", tmp_path / "w", wrong)
    seeded.seed_from(root / "weights", record)
    with pytest.raises(WeightshopError, match="but the recipe continues from 000000"):
        seeded.raw_start()


def test_nano_seed_cli_seeds_and_names_a_bad_record(smoke, tmp_path):
    from typer.testing import CliRunner

    from weightshop.cli.main import app

    root, record = smoke
    (tmp_path / "build.json").write_text(json.dumps(record))
    (tmp_path / "broken.json").write_text("{not json")
    runner = CliRunner()
    # The CLI seeds for the default recipe, whose VAE differs from the smoke one: refused, and the reason named.
    result = runner.invoke(app, ["nano", "seed", str(root / "weights"), "--record", str(tmp_path / "build.json"),
                                 "--workdir", str(tmp_path / "work"), "--json"])
    assert result.exit_code != 0 and "'vae' recipe differs" in result.output
    result = runner.invoke(app, ["nano", "seed", str(root / "weights"), "--record", str(tmp_path / "broken.json"),
                                 "--workdir", str(tmp_path / "work2")])
    assert result.exit_code != 0 and "broken.json" in result.output and "build record" in result.output


def test_nano_seed_cli_seeds_from_the_committed_family(tmp_path):
    from typer.testing import CliRunner

    from weightshop.cli.main import app
    from weightshop.io import sha256_file

    if not builtin.installed():
        pytest.skip("krea2-nano weights not built")
    record = builtin.WEIGHTS.parents[3] / "docs" / "benchmarks" / "nano-build-v3.json"
    result = CliRunner().invoke(app, ["nano", "seed", "--record", str(record), "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["seeded"] == ["world", "vae", "text", "probe"]
    seeded = json.loads((tmp_path / "build.json").read_text())
    assert seeded["seeded_from"]["raw_sha256"] == sha256_file(
        builtin.RAW_DIR / "transformer" / "diffusion_pytorch_model.safetensors")
    assert sha256_file(tmp_path / "final" / "probe" / "probe.safetensors") == sha256_file(
        builtin.PROBE_DIR / "probe.safetensors")


def test_the_card_says_how_raw_began():
    from dataclasses import asdict

    from weightshop.nano.build import V2_RAW_SHA256, continued_raw
    from weightshop.nano.card import _raw_start
    from weightshop.nano.pretrain import TransformerRecipe

    assert _raw_start({"recipe": {"transformer": asdict(TransformerRecipe())}}) == "from the seeded init"
    continued = _raw_start({"recipe": {"transformer": asdict(continued_raw())}})
    assert V2_RAW_SHA256[:12] in continued and "200-step warmup to lr 0.0003" in continued


def test_the_card_says_how_the_text_encoder_was_trained():
    from weightshop.nano.card import _text_training

    assert "seeded random init" in _text_training({"steps": 0})
    assert "next-token" in _text_training({"steps": 800, "final_lm_loss": 2.1})
    readout = _text_training({"steps": 600, "heldout_readout_accuracy": 0.987})
    assert "600 steps" in readout and "spatial slot" in readout and "98.7 %" in readout


def test_score_counts_a_second_object_drawn_like_the_first():
    two = _scene("left of")
    truth = labels(two)
    assert truth["colour"] != truth["colour2"] and truth["shape"] != truth["shape2"]
    copied_colour = dict(truth, colour2=truth["colour"])
    copied_shape = dict(truth, shape2=truth["shape"])
    other = next(c for c in world.COLOURS if c not in (truth["colour"], truth["colour2"]))
    wrong_not_copied = dict(truth, colour2=other)
    result = score([truth, copied_colour, copied_shape, wrong_not_copied], [two] * 4)
    assert result["object2_copies_object1"] == pytest.approx(2 / 4)
    assert result["acc_colour2"] == pytest.approx(2 / 4) and result["acc_shape2"] == pytest.approx(3 / 4)
    one = world.Scene((world.ObjectSpec("circle", "red", "small", "solid"),), "black", position="left", seed=1)
    assert "object2_copies_object1" not in score([labels(one)], [one])


def test_a_seeded_build_carries_its_warm_start(smoke, tmp_path):
    root, record = smoke
    build = Build(tmp_path / "work", tmp_path / "weights", _continuing(root))
    build.seed_from(root / "weights", record)
    carried = build.carry(tmp_path / "carried")
    assert "warm_start/diffusion_pytorch_model.safetensors" in carried
    there = Build(tmp_path / "carried", tmp_path / "weights", _continuing(root))
    assert all(torch.equal(a, b) for a, b in zip(there.raw_start().state_dict().values(),
                                                 build.raw_start().state_dict().values()))
