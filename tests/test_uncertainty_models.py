"""Multi-head / MC-dropout / ensemble models and the repulsive objective on them."""

from types import SimpleNamespace

import pytest
import torch

from nora.errors import NoraError
from nora.models import build_model
from nora.models.multihead import mean_log_probs, member_logits, num_heads, require_heads
from nora.uncertainty.objectives import HeadsNLL, Repulsive, members_ce
from nora.uncertainty.repulsion import repulsion
from nora.uncertainty.repulsion_sets import RepulsionSource, label_destroying


def _ctx(epoch=0, index=0, per_epoch=10, epochs=2):
    return SimpleNamespace(epoch=epoch, batch_index=index, batches_per_epoch=per_epoch, epochs=epochs)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_multihead_shapes_overhead_and_mean_output():
    torch.manual_seed(0)
    model = build_model("multihead", heads=5).eval()
    x = torch.randn(4, 1, 28, 28)
    heads = member_logits(model, x)
    assert heads.shape == (4, 5, 10) and num_heads(model) == 5
    assert torch.allclose(model(x), mean_log_probs(heads), atol=1e-6)
    assert torch.allclose(model(x).exp().sum(1), torch.ones(4), atol=1e-5)
    single = build_model("lenet5")
    assert _params(model) / _params(single) < 1.1  # 5 heads cost 4 extra 84x10 layers
    assert _params(build_model("ensemble", members=5)) == 5 * _params(single)


def test_single_head_checkpoint_loads_into_backbone():
    torch.manual_seed(1)
    single = build_model("lenet5")
    model = build_model("multihead", heads=3)
    result = model.load_state_dict(single.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["classifier.5.linear.bias", "classifier.5.linear.weight"]
    assert sorted(result.unexpected_keys) == ["classifier.5.bias", "classifier.5.weight"]
    assert torch.equal(model.features[0].weight, single.features[0].weight)


def test_frozen_backbone_trains_only_heads():
    model = build_model("multihead", backbone="lenet5", heads=3, backbone_kwargs={"batch_norm": True},
                        freeze_backbone=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.7.linear.weight", "classifier.7.linear.bias"]
    model.train()
    before = model.features[1].running_mean.clone()
    model(torch.randn(8, 1, 28, 28))
    assert torch.equal(model.features[1].running_mean, before)  # norm layers stay in eval mode


def test_mcdropout_is_reproducible_after_reseed():
    from nora.models.multihead import reseed_heads

    model = build_model("mcdropout", samples=6, p=0.5).eval()
    x = torch.randn(3, 1, 28, 28)
    a = member_logits(model, x)
    reseed_heads(model, 0)
    b = member_logits(model, x)
    assert a.shape == (3, 6, 10) and torch.equal(a, b)
    assert not torch.allclose(a[:, 0], a[:, 1])


@pytest.mark.parametrize("arch,option", [("multihead", "heads"), ("mcdropout", "samples"), ("ensemble", "members")])
def test_fewer_than_two_members_rejected(arch, option):
    with pytest.raises(NoraError, match=f"{option} must be at least 2"):
        build_model(arch, **{option: 1})


def test_bad_backbone_options_rejected():
    for kwargs, match in (({"backbone": "ensemble"}, "single-head zoo model"),
                          ({"backbone_kwargs": {"num_classes": 3}}, "give num_classes to multihead"),
                          ({"backbone_kwargs": [1]}, "mapping"), ({"backbone": "lenet"}, "unknown model"),
                          ({"backbone_kwargs": {"depth": 3}}, "no option 'depth'")):
        with pytest.raises(NoraError, match=match):
            build_model("multihead", **kwargs)
    with pytest.raises(NoraError, match="no classes"):
        build_model("multihead", backbone="autoencoder", input_shape=(1, 10, 49))


def test_head_specific_use_of_single_head_model_rejected():
    with pytest.raises(NoraError, match="single-head 'lenet5'"):
        require_heads(build_model("lenet5"), "per-head scores")
    obj = Repulsive()
    with pytest.raises(NoraError, match="several heads"):
        obj.loss(build_model("lenet5"), torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), _ctx())


def test_repulsive_gradient_is_likelihood_plus_vjp_of_repulsion():
    torch.manual_seed(2)
    model = build_model("multihead", input_shape=(1, 8, 8), heads=4)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    obj = Repulsive(repulsion_set="train", batch_size=8, weight=0.3, schedule="linear", warm=1.0)
    ctx = _ctx(epoch=0, index=5, per_epoch=10, epochs=2)  # gamma = 5/20 / 1.0
    loss = obj.loss(model, x, y, ctx)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # by hand: same repulsion batch, gamma * grad CE + weight / M * J^T r
    xr = obj.source.batch(x, 0, 5)
    logits = member_logits(model, torch.cat([x, xr]))
    ce = members_ce(logits[:16], y)
    f = logits[16:].softmax(-1).transpose(0, 1)
    r = repulsion(f)
    manual = torch.autograd.grad(0.25 * ce + 0.3 / 4 * (f * r).sum(), list(model.parameters()))
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)  # the reported value is the plain CE
    for a, b in zip(grads, manual):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("space,estimator,prior", [("logits", "kde", None), ("centered", "sge", None),
                                                   ("probs", "sge", 0.7), ("probs", "kde", 0.5)])
def test_repulsive_gradient_matches_autograd_of_the_update_in_every_space(space, estimator, prior):
    torch.manual_seed(6)
    model = build_model("multihead", input_shape=(1, 8, 8), heads=3)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    obj = Repulsive(batch_size=5, weight=0.2, space=space, estimator=estimator, prior_std=prior,
                    schedule="linear", warm=1.0)
    ctx = _ctx(epoch=1, index=2, per_epoch=10, epochs=2)  # gamma = 12/20
    grads = torch.autograd.grad(obj.loss(model, x, y, ctx), list(model.parameters()))
    logits = member_logits(model, torch.cat([x, obj.source.batch(x, 1, 2)]))
    z = logits[12:]
    f = {"probs": z.softmax(-1), "logits": z, "centered": z - z.mean(-1, keepdim=True)}[space].transpose(0, 1)
    surrogate = 0.6 * members_ce(logits[:12], y) + 0.2 / 3 * (f * repulsion(f, estimator)).sum()
    if prior is not None:
        surrogate = surrogate + 0.6 * z.pow(2).sum(-1).mean() / (2 * prior ** 2)
    for a, b in zip(grads, torch.autograd.grad(surrogate, list(model.parameters()))):
        assert torch.allclose(a, b, atol=1e-6)


def test_prior_score_adds_gaussian_pull():
    torch.manual_seed(3)
    model = build_model("multihead", input_shape=(1, 8, 8), heads=3)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    plain = Repulsive(repulsion_set="train", batch_size=4, weight=0.0)
    prior = Repulsive(repulsion_set="train", batch_size=4, weight=0.0, prior_std=0.5)
    g0 = torch.autograd.grad(plain.loss(model, x, y, _ctx()), model.classifier[5].linear.bias)[0]
    g1 = torch.autograd.grad(prior.loss(model, x, y, _ctx()), model.classifier[5].linear.bias)[0]
    logits = member_logits(model, prior.source.batch(x, 0, 0)).detach()
    expected = (logits / 0.25).mean(0).reshape(-1) / 3  # d/db of the (sample, member) mean of ||z||^2 / (2 s^2)
    assert torch.allclose(g1 - g0, expected, atol=1e-5)


def test_heads_nll_is_mean_of_member_cross_entropies():
    torch.manual_seed(4)
    model = build_model("multihead", input_shape=(1, 8, 8), heads=3)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    z = member_logits(model, x)
    expected = sum(torch.nn.functional.cross_entropy(z[:, i], y) for i in range(3)) / 3
    assert HeadsNLL().loss(model, x, y, _ctx()).item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_destroying_augmentations_and_sources():
    g = torch.Generator().manual_seed(5)
    x = torch.arange(3 * 2 * 10 * 9, dtype=torch.float32).view(3, 2, 10, 9)  # 4x4 grid of 2x2 patches + a border
    shuffled = label_destroying(x, g, ("patches",))

    def cells(t):
        return [t[:, i:i + 2, j:j + 2] for i in range(0, 8, 2) for j in range(0, 8, 2)]

    for out, image in zip(shuffled, x):
        assert torch.equal(out[:, 8:], image[:, 8:]) and torch.equal(out[:, :, 8:], image[:, :, 8:])  # border kept
        sources = [next(k for k, cell in enumerate(cells(image)) if torch.equal(cell, patch)) for patch in cells(out)]
        assert sorted(sources) == list(range(16)) and sources != list(range(16))  # a permutation of whole patches
    blended = label_destroying(x, g, ("blend",))
    for out, image in zip(blended, x):  # the mean with some input of the batch, every channel alike
        assert any(torch.equal(out, 0.5 * (image + other)) for other in x)
    assert not torch.equal(blended, x)
    mixed = label_destroying(torch.rand(200, 1, 8, 8), g)
    assert mixed.shape == (200, 1, 8, 8)
    with pytest.raises(NoraError, match="patch shuffling needs images"):
        label_destroying(torch.rand(4, 10), g, ("patches",))
    assert label_destroying(torch.rand(4, 10), g).shape == (4, 10)  # flat inputs: blends only
    source = RepulsionSource("augment", 2, seed=1)
    assert torch.equal(source.batch(x, 3, 4), RepulsionSource("augment", 2, seed=1).batch(x, 3, 4))
    for bad in ("ood", "mixup", "ood:"):
        with pytest.raises(NoraError, match="repulsion_set"):
            RepulsionSource(bad, 4)


@pytest.mark.parametrize("kind", ["augment", "train"])
def test_repulsion_batches_depend_only_on_seed_epoch_and_step(kind):
    """Draws are made per block of steps; any step's batch must not depend on which steps ran before."""
    x = torch.rand(20, 1, 8, 8)
    walked = RepulsionSource(kind, 4, seed=2)
    batches = {(e, s): walked.batch(x, e, s) for e in (0, 1) for s in (0, 1, 63, 64, 65, 200)}
    for (e, s), batch in reversed(batches.items()):
        assert torch.equal(RepulsionSource(kind, 4, seed=2).batch(x, e, s), batch)
        assert torch.equal(walked.batch(x, e, s), batch)
    assert not torch.equal(batches[0, 1], batches[0, 0]) and not torch.equal(batches[1, 1], batches[0, 1])
    assert not torch.equal(RepulsionSource(kind, 4, seed=3).batch(x, 0, 0), batches[0, 0])
    if kind == "train":  # distinct rows of the step's batch
        rows = [int((x == row).all(-1).all(-1).all(-1).nonzero()) for row in batches[0, 0]]
        assert len(set(rows)) == 4
    assert walked.batch(x[:3], 0, 5).shape == (3, 1, 8, 8)  # a short last batch gives what it has


def test_repulsion_set_shape_mismatch_names_both_shapes():
    model = build_model("multihead", heads=2)  # MNIST-shaped
    obj = Repulsive(repulsion_set="ood:digits")
    with pytest.raises(NoraError, match=r"\(1, 8, 8\).*\(1, 28, 28\)"):
        obj.loss(model, torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), _ctx())


def test_bad_objective_options_rejected():
    for kwargs, match in (({"estimator": "svgd"}, "estimator"), ({"space": "x"}, "space"),
                          ({"weight": -1}, "weight"), ({"schedule": "cos"}, "schedule"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(NoraError, match=match):
            Repulsive(**kwargs)


def test_per_sample_training_sigma_covers_the_repulsion_inputs():
    import nora

    torch.manual_seed(5)
    model = build_model("multihead", input_shape=(1, 8, 8), heads=3).train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    scale = torch.linspace(0.5, 1.5, 6)
    with nora.attach(model, nora.GaussianAdditive(0.3), seed=0) as handle:
        handle.sigma_scale = scale
        loss = Repulsive(repulsion_set="train", batch_size=4).loss(model, x, y, _ctx())
        assert torch.isfinite(loss) and handle.sigma_scale is scale  # restored after the forward
