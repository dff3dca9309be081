import pytest

from fm2s.recipes import MICROSCOPES, RECIPES, make_config, with_noise


def test_paper_recipe_constants_ignore_microscope():
    configs = {m: make_config("paper", m) for m in MICROSCOPES}
    noise = configs["confocal"].noise
    assert all(c.noise == noise for c in configs.values())
    assert (noise.amplification, noise.stride, noise.median) == (2, 75, 3)
    assert (noise.k_g, noise.k_p, noise.lambda_p) == (200, 30, 60)
    assert noise.mean_range == (0.01, 0.20) and not noise.zero_padded_windows
    c = configs["widefield"]
    assert c.kernels == (3, 3, 3) and c.total_steps == 25 * 150
    assert (c.lr, c.lr_decay_every, c.lr_decay, c.crop) == (1e-3, 1500, 0.25, 0)


@pytest.mark.parametrize("microscope, row", [
    ("confocal", (2, 75, 3, 200, 30, 70)),
    ("twophoton", (2, 75, 3, 175, 30, 60)),
    ("widefield", (1, 75, 11, 220, 45, 2000)),
    ("generic", (6, 5, 3, 60, 40, 125)),
])
def test_v2_presets_match_the_published_table(microscope, row):
    c = make_config("v2", microscope)
    n = c.noise
    assert (n.amplification, n.stride, n.median, n.k_g, n.k_p, n.lambda_p) == row
    assert n.mean_range == (1e-5, 0.15) and n.zero_padded_windows
    assert c.kernels == (5, 3, 5) and c.halo == 5
    assert (c.warmup_steps, c.samples, c.steps_per_sample, c.lr, c.crop) == (5, 450, 5, 1e-3, 0)


def test_default_is_fast_with_auto_noise_and_named_presets_are_v2s():
    c = make_config()
    assert c.recipe == "fast" and c.microscope == "auto" and not c.calibrated
    for name in ("confocal", "widefield", "twophoton-avg4"):
        assert make_config("fast", name).noise == make_config("v2", name).noise
        assert make_config("fast", name).calibrated


def test_per_level_presets_change_only_the_noise_constants():
    avg1, avg4 = make_config("v2", "confocal").noise, make_config("v2", "confocal-avg4").noise
    assert (avg4.k_g, avg4.k_p, avg4.lambda_p) == (70, 195, 485)
    assert (avg4.amplification, avg4.stride, avg4.median) == (avg1.amplification, avg1.stride,
                                                              avg1.median)
    assert make_config("fast", "widefield-avg2").samples == make_config("fast",
                                                                        "widefield").samples


def test_views_two_for_fast_one_for_the_published_recipes_and_validated():
    from fm2s.errors import ParameterError
    from fm2s.recipes import config_for

    assert make_config("fast").views == 2
    assert make_config("paper").views == make_config("v2").views == 1
    assert config_for("fast", "confocal", 0, 1, views=4).views == 4
    with pytest.raises(ParameterError, match="choose 1, 2 or 4"):
        config_for("fast", "confocal", 0, 1, views=3)
    with pytest.raises(ValueError):
        make_config(views=0)


@pytest.mark.parametrize("kwargs", [
    dict(recipe="nope"), dict(microscope="electron"), dict(seed=-1),
    dict(samples=0), dict(kernels=(4, 3, 3)), dict(lr=0.0), dict(crop=-2),
])
def test_bad_values_are_rejected(kwargs):
    with pytest.raises(ValueError):
        make_config(**kwargs)


def test_configs_are_frozen_and_noise_validated():
    c = make_config()
    with pytest.raises(AttributeError):
        c.seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        with_noise(c, median=4)
    assert with_noise(c, k_g=10).noise.k_g == 10


def test_presets_train_on_the_published_median_target():
    """Only a calibrated (auto) noise model may keep some detail in the target."""
    for recipe in RECIPES:
        for microscope in MICROSCOPES:
            assert make_config(recipe, microscope).noise.detail == 0.0
