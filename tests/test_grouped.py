"""Many models trained at once (fm2s.grouped): each is the model trained alone."""

import numpy as np
import pytest
import torch

from fm2s.grouped import groups, model_bytes, train_grouped
from fm2s.normalize import fit_normalization
from fm2s.recipes import make_config
from fm2s.sample import synthetic_image
from fm2s.training import Sampler, train_network

#: rounding of a grouped convolution against three single ones, over 50 steps, stays far
#: below this; a model trained on another model's noise draws ends far above it
ROUNDING = 1e-4


def three_models(rng, device="cpu"):
    """Three images of other sizes and contents, three seeds: 50 steps each."""
    shapes = [(72, 90), (80, 64), (96, 96)]
    images = [synthetic_image(s, rng)[0] for s in shapes]
    configs = [make_config("fast", "confocal", seed=seed, samples=5, crop=48)
               for seed in (11, 12, 13)]
    assert {c.total_steps for c in configs} == {50}
    planes = [fit_normalization(i, c.normalization).forward(i) for i, c in zip(images, configs)]
    return planes, configs


def largest_difference(a, b) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def check_batched_equals_alone(rng, device):
    planes, configs = three_models(rng)
    dev = torch.device(device)
    alone = [train_network(p, c, dev) for p, c in zip(planes, configs)]
    batched = train_grouped([Sampler(p, c, dev) for p, c in zip(planes, configs)])
    assert len(batched) == 3
    for a, b in zip(alone, batched):
        assert not b.training and next(b.parameters()).device.type == "cpu"
        assert largest_difference(a, b) <= ROUNDING
    # the models differ from each other: each kept its own seed and image
    assert largest_difference(batched[0], batched[1]) > 100 * ROUNDING

    # the same comparison fails when one model draws its noise from another's generator
    shared = [Sampler(p, c, dev) for p, c in zip(planes, configs)]
    shared[1].gen = shared[0].gen
    wrong = train_grouped(shared)
    assert largest_difference(alone[1], wrong[1]) > 10 * ROUNDING
    # ... or when two models share a seed
    same_seed = [Sampler(p, c, dev) for p, c in zip(planes, [configs[0], configs[0],
                                                             configs[2]])]
    wrong = train_grouped(same_seed)
    assert largest_difference(alone[1], wrong[1]) > 10 * ROUNDING


def test_three_models_batched_equal_three_trained_alone(rng):
    check_batched_equals_alone(rng, "cpu")


def test_models_of_other_schedules_are_not_batched(rng):
    planes, configs = three_models(rng)
    other = make_config("fast", "confocal", seed=1, samples=6, crop=48)
    samplers = [Sampler(p, c, torch.device("cpu")) for p, c in zip(planes, [*configs[:2], other])]
    with pytest.raises(ValueError, match="one network shape"):
        train_grouped(samplers)
    assert groups(samplers) == [[0, 1], [2]]


def test_batches_are_capped_by_memory(rng):
    planes, configs = three_models(rng)
    samplers = [Sampler(p, c, torch.device("cpu")) for p, c in zip(planes, configs)]
    sizes = [model_bytes(s) for s in samplers]
    assert groups(samplers) == [[0, 1, 2]]
    assert groups(samplers, budget=sizes[0] + sizes[1]) == [[0, 1], [2]]
    assert groups(samplers, budget=1) == [[0], [1], [2]]  # too big alone: trains alone


def test_whole_image_models_batch_only_with_their_shape(rng):
    images = [rng.random((40, 50), dtype=np.float32) for _ in range(3)]
    images[2] = rng.random((40, 52), dtype=np.float32)
    config = make_config("fast", "confocal", crop=0, samples=2, steps_per_sample=2)
    samplers = [Sampler(i, config, torch.device("cpu")) for i in images]
    assert groups(samplers) == [[0, 1], [2]]
    alone = train_network(images[1], config)
    (_, b) = train_grouped(samplers[:2])
    assert largest_difference(alone, b) <= ROUNDING


@pytest.mark.parametrize("microscope", ["measured", "auto"])
def test_train_models_batched_are_the_models_trained_alone(rng, microscope):
    """fm2s.model.train_models: ``measured`` measures each image's noise as train_model
    does, ``auto`` runs each image's comparison alone as train_model does; then the models
    train in one program per network shape and schedule (batched=True, as on CUDA); not
    batched (the CPU's default), the very models of train_model."""
    from fm2s.grouped import group_key
    from fm2s.model import train_model, train_models

    images = [synthetic_image((64, 80), rng)[0] for _ in range(3)]
    configs = [make_config("fast", microscope, seed=s, samples=3) for s in (1, 2, 3)]
    alone = [train_model(i, c, "cpu") for i, c in zip(images, configs)]
    together = train_models(images, configs, "cpu", batched=True)
    apart = train_models(images, configs, "cpu")
    keys = [group_key(Sampler(a.normalization.forward(i), a.config, torch.device("cpu")))
            for a, i in zip(alone, images)]
    assert [m.batched for m in together] == [keys.count(k) for k in keys]
    if microscope == "measured":  # one synthesis, one schedule: one program
        assert [m.batched for m in together] == [3, 3, 3]
    assert [m.batched for m in apart] == [1, 1, 1]
    for a, b, c in zip(alone, together, apart):
        assert b.config == a.config and b.estimate == a.estimate
        assert b.selection == a.selection and (a.selection is not None) == (microscope == "auto")
        assert b.normalization == a.normalization and b.percentiles == a.percentiles
        assert largest_difference(a.net, b.net) <= ROUNDING
        assert largest_difference(a.net, c.net) == 0
