"""Ordered MAC of a BrainScaleS-2-like processor against hand-computed and reference-loop results."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nora.analog as A
from nora.analog.ordered import accumulate, draw_pattern, integer_inputs, integer_weights, mac
from nora.errors import NoraError
from nora.noise.rng import Stream
from nora.seeds import SeedTree

NO_PATTERN = {"gain": torch.ones(1), "offset": torch.zeros(1)}


def _cfg(**over):
    return A.OrderedMACConfig(**{"noise": 0.0, **over})


def _reference(x, w, gain, lo, hi, order):
    """Sequential clamped accumulation of one column in the order given, in plain Python."""
    s = 0.0
    for k in order:
        s = min(max(s + gain * x[k] * w[k], lo), hi)
    return s


def test_saturation_order_matters_by_hand():
    # operands +100, +100, -150 (gain 1): ordered 0 -> 100 -> 127 (clamped) -> -23; unordered: 50
    x = torch.tensor([[1.0, 1.0, 1.0]])
    w = torch.tensor([[100.0, 100.0, -150.0]])
    ordered = mac(x, w, _cfg(gain=1.0, rows=3), NO_PATTERN, None)
    unordered = mac(x, w, _cfg(gain=1.0, rows=3, ordered=False), NO_PATTERN, None)
    assert ordered.item() == -23 and unordered.item() == 50
    negative_last = mac(x, torch.tensor([[-150.0, 100.0, 100.0]]), _cfg(gain=1.0, rows=3), NO_PATTERN, None)
    assert negative_last.item() == 72  # -150 clamps to -128, then -28, then 72


def test_orders_match_reference_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 32, (6, 20), generator=g).float()
    w = torch.randint(-63, 64, (5, 20), generator=g).float()
    cfg = dict(gain=0.1, rows=20)
    xc, wc = x.reshape(6, 1, 20), w.T.reshape(1, 20, 5)
    gain = torch.ones(5) * 0.1
    natural = accumulate(xc, wc, gain, _cfg(order="natural", **cfg))
    magnitude = accumulate(xc, wc, gain, _cfg(order="magnitude", **cfg))
    positive = accumulate(xc, wc, gain, _cfg(order="positive_first", **cfg))
    for r in range(6):
        for j in range(5):
            xs, ws = x[r].tolist(), w[j].tolist()
            assert natural[r, 0, j].item() == pytest.approx(_reference(xs, ws, 0.1, -128, 127, range(20)), abs=1e-4)
            by_mag = sorted(range(20), key=lambda k: -xs[k])  # stable: ties keep row order
            assert magnitude[r, 0, j].item() == pytest.approx(_reference(xs, ws, 0.1, -128, 127, by_mag), abs=1e-4)
            pos_first = sorted(range(20), key=lambda k: 0 if ws[k] * xs[k] > 0 else 1)
            assert positive[r, 0, j].item() == pytest.approx(_reference(xs, ws, 0.1, -128, 127, pos_first), abs=1e-4)
    random_order = accumulate(xc, wc, gain, _cfg(order="random", **cfg), torch.Generator().manual_seed(1))
    assert random_order.shape == natural.shape and not torch.equal(random_order, natural)


def test_chunks_are_clamped_then_summed_and_clamped_again():
    x = torch.ones(1, 300)
    w = torch.ones(1, 300)
    # per chunk of 128: 128 ones at gain 1 -> 127 (clamped), 127, 44 -> total 298 -> 127
    assert mac(x, w, _cfg(gain=1.0), NO_PATTERN, None).item() == 127
    # gain 0.5 with a wide output range: floor(64) + floor(64) + floor(22) = 150
    assert mac(x, w, _cfg(gain=0.5, out_min=-1000, out_max=1000), NO_PATTERN, None).item() == 150


def test_floor_and_noise_statistics():
    x = torch.zeros(40000, 128)
    w = torch.zeros(1, 128)
    codes = mac(x, w, _cfg(noise=2.0), NO_PATTERN, Stream(SeedTree(2)))
    # floor(N(0, 4)): mean -1/2, variance 4 + 1/12 (Sheppard); 40k draws: SE of the mean 0.01
    assert codes.mean().item() == pytest.approx(-0.5, abs=0.05)
    assert codes.var().item() == pytest.approx(4 + 1 / 12, rel=0.05)


def test_integer_ranges_and_dequantisation_without_saturation():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 40, generator=g)
    w = torch.randn(3, 40, generator=g)
    cfg = _cfg(gain=1.0, out_min=-10 ** 7, out_max=10 ** 7)
    w_int, w_scale = integer_weights(w, cfg)
    parts, x_scale = integer_inputs(x, cfg)
    assert w_int.abs().max() == 63 and all(p.min() >= 0 and p.max() <= 31 for p in parts)
    assert parts[0].amax(1).max() == 31 or parts[1].amax(1).max() == 31
    layer = nn.Linear(40, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    with cfg.attach(layer, 0):
        y = layer(x)
    expected = ((parts[0] - parts[1]) * x_scale) @ (w_int * w_scale).T  # exact integer arithmetic, scaled back
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_fixed_pattern_per_chip_and_straight_through_backward():
    cfg = _cfg(gain_spread=0.05, offset_spread=1.0)
    a = draw_pattern(cfg, 4000, SeedTree(1).generator(), "cpu")
    b = draw_pattern(cfg, 4000, SeedTree(1).generator(), "cpu")
    c = draw_pattern(cfg, 4000, SeedTree(2).generator(), "cpu")
    assert torch.equal(a["gain"], b["gain"]) and not torch.equal(a["gain"], c["gain"])
    assert a["gain"].std().item() == pytest.approx(0.05, rel=0.1)
    assert a["offset"].std().item() == pytest.approx(1.0, rel=0.1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 300)
    with A.OrderedMACConfig(gain=0.05, gain_spread=0.05).attach(model, SeedTree(5)) as att:
        model(x).pow(2).sum().backward()
        first = model(x).detach()
        att.reseed(SeedTree(6))
        assert not torch.equal(model(x).detach(), first)  # another chip, another fixed pattern
    analog_grad = model[0].weight.grad.clone()
    assert analog_grad.abs().sum() > 0
    model.zero_grad()
    # straight-through: the backward of the float layers, evaluated at the analog forward's outputs
    with torch.no_grad():
        with A.OrderedMACConfig(gain=0.05, gain_spread=0.05).attach(model, SeedTree(5)):
            hidden = model[1](model[0](x))
            out = model[2](hidden)
    out_grad = 2 * out
    hidden_grad = (out_grad @ model[2].weight) * (hidden > 0)
    assert torch.allclose(analog_grad, hidden_grad.T @ x, rtol=1e-4, atol=1e-3)


def test_conv_layers_and_bad_layers():
    conv = nn.Conv2d(1, 3, 3).eval()
    x = torch.rand(2, 1, 6, 6)
    with _cfg(gain=1.0, out_min=-10 ** 7, out_max=10 ** 7).attach(conv, 0):
        y = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias)
    assert y.shape == ref.shape
    assert (y - ref).abs().max() < 0.1 * ref.abs().max()   # 5-bit inputs and 6-bit weights
    with pytest.raises(NoraError, match="ConvTranspose1d"):
        _cfg().attach(nn.Sequential(nn.ConvTranspose1d(2, 2, 3)), 0)
    assert math.isfinite(y.sum().item())


def test_chip_seed_pins_the_fixed_pattern_across_reseeds():
    layer = nn.Linear(200, 8).eval()
    x = torch.rand(16, 200)
    cfg = A.OrderedMACConfig(noise=0.0, gain=0.05, gain_spread=0.1, offset_spread=1.0, chip_seed=7)
    with cfg.attach(layer, SeedTree(1)) as att:
        first = layer(x)
        att.reseed(SeedTree(2))
        assert torch.equal(layer(x), first)          # the same chip whatever the repeat's seeds
    with cfg.varied("chip_seed", 8).attach(layer, SeedTree(1)):
        assert not torch.equal(layer(x), first)      # another chip
    with pytest.raises(NoraError, match="chip_seed"):
        cfg.varied("chip_seed", -1)


def test_short_layers_and_padded_chunks_use_every_operand():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 32, (5, 150), generator=g).float()     # 2 chunks, the second holds 22 rows
    w = torch.randint(-63, 64, (3, 150), generator=g).float()
    cfg = dict(gain=1.0, out_min=-10 ** 7, out_max=10 ** 7)
    exact = x @ w.T
    for order in ("natural", "magnitude", "random"):
        got = mac(x, w, _cfg(order=order, **cfg), NO_PATTERN, None, torch.Generator().manual_seed(0))
        assert torch.equal(got, exact), order                    # no saturation: every order is exact
    short = x[:, :20] @ w[:, :20].T
    assert torch.equal(mac(x[:, :20], w[:, :20], _cfg(order="random", **cfg), NO_PATTERN, None,
                           torch.Generator().manual_seed(0)), short)


def test_saturation_masked_backward_zeroes_clamped_outputs():
    x = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = torch.tensor([[100.0, 100.0, -150.0]])
    _, clipped = mac(x, w, _cfg(gain=1.0, rows=3), NO_PATTERN, None, with_mask=True)
    assert clipped.tolist() == [[True], [False]]          # only the first row saturated on the way
    _, clipped = mac(x, w, _cfg(gain=1.0, rows=3, ordered=False), NO_PATTERN, None, with_mask=True)
    assert clipped.tolist() == [[False], [False]]         # unordered: the total 50 fits
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)       # integer weights 42, 42, -63; inputs 31
    xs = x.clone().requires_grad_()
    # row 0: 65.1, 130.2 -> 127, then 29.4 (clamped on the way); row 1: 65.1 (never clamped)
    cfg = _cfg(gain=0.05, rows=3, backward="saturation_masked", input_sign="unsigned")
    with cfg.attach(layer, 0):
        layer(xs).sum().backward()
    assert xs.grad[0].abs().sum() == 0 and xs.grad[1].abs().sum() > 0
