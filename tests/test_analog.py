"""Crossbar tile: each physical piece against its closed form, attach/reseed/detach, configs and bad input."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nora.analog as A
from nora.analog import pcm
import nora
from nora.analog import tile as tile_module
from nora.analog import kernels as analog_kernels
from nora.analog.layers import Patches, as_matmul
from nora.analog.tile import read_block
from nora.errors import NoraError
from nora.noise.rng import make_stream
from nora.seeds import SeedTree


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _stream(seed=0, mode="exact"):
    return make_stream(SeedTree(seed), mode)


def _ideal(**over):
    return A.hardware_from_dict({"preset": "ideal", **over})


# -- periphery ------------------------------------------------------------------------------------
def test_adc_levels_step_and_bound():
    x = torch.linspace(-3, 3, 10001).unsqueeze(1)        # one input feature: the output is the input
    w = torch.ones(1, 1)
    fwd = A.ForwardConfig(inp_bits=None, out_bits=4, out_bound=2.0, out_noise=0.0, noise_management="none",
                          bound_management="none", inp_bound=10.0)
    q = read_block(x, w, fwd, _stream())
    step = 4.0 / (2 ** 4 - 2)
    assert q.abs().max() == pytest.approx(2.0)
    assert len(torch.unique(q)) == 2 ** 4 - 1
    assert torch.allclose(q / step, torch.round(q / step))
    assert (q - x.clamp(-2, 2)).abs().max() <= step / 2 + 1e-6
    ideal_adc = A.ForwardConfig(**{**dataclasses.asdict(fwd), "out_bits": None})
    assert torch.allclose(read_block(x, w, ideal_adc, _stream()), x.clamp(-2, 2))


def test_read_block_ideal_is_matmul_and_noise_management_is_scale_free():
    g = _gen()
    x = torch.randn(50, 30, generator=g, dtype=torch.float64)
    w = torch.rand(20, 30, generator=g, dtype=torch.float64) * 2 - 1
    ideal = A.ForwardConfig(inp_bits=None, out_bits=None, out_noise=0.0, bound_management="none", out_bound=1e6,
                            inp_bound=1e6, noise_management="none")
    assert torch.allclose(read_block(x, w, ideal, _stream()), x @ w.T)
    quant = A.ForwardConfig(inp_bits=6, out_bits=None, out_noise=0.0, bound_management="none", out_bound=1e6)
    # abs-max noise management: the DAC sees x / max|x|, so scaling the input scales the output exactly
    assert torch.allclose(read_block(10 * x, w, quant, _stream()), 10 * read_block(x, w, quant, _stream()))
    step = 2.0 / (2 ** 6 - 2)
    alpha = x.abs().amax(1, keepdim=True)
    expected = (torch.round(x / alpha / step) * step @ w.T) * alpha
    assert torch.allclose(read_block(x, w, quant, _stream()), expected)


def test_bound_management_recovers_saturated_outputs():
    w = torch.ones(3, 64, dtype=torch.float64)
    x = torch.ones(4, 64, dtype=torch.float64)  # every output is 64 > bound 12
    common = dict(inp_bits=None, out_bits=None, out_noise=0.0, out_bound=12.0)
    clipped = read_block(x, w, A.ForwardConfig(bound_management="none", **common), _stream())
    assert torch.allclose(clipped, torch.full_like(clipped, 12.0))
    managed = read_block(x, w, A.ForwardConfig(bound_management="iterative", **common), _stream())
    assert torch.allclose(managed, torch.full_like(managed, 64.0))  # 64 / 8 = 8 < 12: three halvings


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_output_noise_std(mode):
    w = torch.eye(8)
    x = torch.zeros(20000, 8)
    fwd = A.ForwardConfig(inp_bits=None, out_bits=None, out_noise=0.3, bound_management="none")
    y = read_block(x, w, fwd, _stream(mode=mode))
    assert abs(y.mean().item()) < 0.01
    assert y.std().item() == pytest.approx(0.3, rel=0.02)  # 160k draws: relative SE of the std ~0.2 %


# -- mapping and tiling ---------------------------------------------------------------------------
def test_tiling_into_blocks_with_digital_partial_sums_is_exact():
    torch.manual_seed(0)
    layer = nn.Linear(600, 700).double()
    x = torch.randn(16, 600, dtype=torch.float64)
    cfg = _ideal(mapping={"max_in": 256, "max_out": 128})
    expected = F.linear(x, layer.weight, layer.bias)
    for training in (True, False):  # the training path (no programming) and the programmed chip
        layer.train(training)
        with cfg.attach(layer, 0) as att:
            assert torch.allclose(layer(x), expected, atol=1e-9)
    blocks = att.layers[0].state["blocks"]
    assert len(blocks) == math.ceil(600 / 256) * math.ceil(700 / 128)
    assert all(b["w_n"].shape[0] <= 128 and b["w_n"].shape[1] <= 256 for b in blocks)
    assert all(b["w_n"].abs().max() == pytest.approx(1.0) for b in blocks)


def test_analog_bias_row_and_conv_layers_match_float():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(3, 5, 3, stride=2, padding=1, dilation=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(5 * 9, 4)).double().eval()
    x = torch.randn(6, 3, 20, dtype=torch.float64)
    y0 = model(x)
    with _ideal(mapping={"digital_bias": False}).attach(model, 0):
        assert torch.allclose(model(x), y0, atol=1e-9)
    conv = nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)).double().eval()
    x2 = torch.randn(3, 2, 9, 7, dtype=torch.float64)
    with _ideal().attach(conv, 0):
        assert torch.allclose(conv(x2), F.conv2d(x2, conv.weight, conv.bias, (2, 1), (1, 0), (1, 2)), atol=1e-9)


def test_conv_patch_scaling_equals_the_unfolded_linear_tile():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1), bias=False).double().eval()
    x = torch.randn(5, 3, 9, 8, dtype=torch.float64)
    cfg = A.TileConfig(forward=A.ForwardConfig(inp_bits=4, out_bits=None, out_noise=0.0))
    with cfg.attach(conv, 0):
        y = conv(x)
    cols = F.unfold(x, (3, 2), dilation=(2, 1), padding=(2, 1), stride=(2, 1)).transpose(1, 2)
    linear = nn.Linear(cols.shape[-1], 4, bias=False).double().eval()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(4, -1))
    with cfg.attach(linear, 0):
        expected = linear(cols).transpose(1, 2).reshape(y.shape)   # per-patch abs-max via a reduction
    assert torch.allclose(y, expected, atol=1e-12)
    assert not torch.allclose(y, F.conv2d(x, conv.weight, None, (2, 1), (2, 1), (2, 1)), atol=1e-3)


def test_patches_are_the_unfold_columns():
    torch.manual_seed(5)
    x = torch.randn(3, 2, 9, 8, dtype=torch.float64)
    geometry = dict(kernel_size=(3, 2), dilation=(2, 1), padding=(1, 1), stride=(2, 3))
    patches = Patches.of(x, (3, 2), (2, 3), (2, 1), (1, 1))
    cols = F.unfold(x, **geometry)
    assert patches.shape == cols.shape and torch.equal(patches.columns(), cols)
    factor = torch.rand(3, 1, cols.shape[-1], dtype=torch.float64)
    assert torch.equal(patches.scaled(factor), cols * factor)
    where = (torch.tensor([0, 2, 2]), torch.tensor([1, 0, cols.shape[-1] - 1]))
    assert torch.equal(patches.rows(where), cols.transpose(1, 2)[where])
    assert torch.equal(patches.batch(1, 3).columns(), cols[1:3])


@pytest.fixture(scope="module")
def dac_kernels():
    """The compiled convolution DAC kernels (built on first use: about a minute on a fresh machine)."""
    if analog_kernels._extension() is None:
        pytest.skip("the DAC kernels need ninja and a C++ compiler")


#: (input shape, kernel, stride, dilation, padding): LeNet-5's two convolutions (rows of 24 and 8: a
#: multiple of 8, read in halves), padded and odd rows (masked loads across rows), a last block of 8,
#: and strided rows (the scalar loop).
GEOMETRIES = [((20, 1, 28, 28), (5, 5), (1, 1), (1, 1), (0, 0)), ((9, 6, 12, 12), (5, 5), (1, 1), (1, 1), (0, 0)),
              ((26, 1, 28, 28), (5, 5), (1, 1), (1, 1), (2, 2)), ((34, 6, 14, 14), (5, 5), (1, 1), (1, 1), (0, 0)),
              ((5, 2, 7, 12), (5, 5), (1, 1), (1, 1), (0, 0)),
              ((3, 2, 9, 11), (3, 2), (2, 1), (1, 2), (1, 0)), ((2, 3, 7, 40), (1, 5), (1, 2), (1, 1), (0, 1))]


def _without_kernels(monkeypatch, run):
    with monkeypatch.context() as patched:
        patched.setattr(analog_kernels, "usable", lambda *args: False)
        return run()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_dac_kernel_writes_torchs_codes(dac_kernels, dtype, geometry, monkeypatch):
    """Columns times a per-patch or global scale, clipped and rounded (ties to even): the same bits,
    NaN included, as torch's mul, clamp and round over the strided view."""
    shape, kernel, stride, dilation, padding = geometry
    generator = _gen(11)
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 12).round() / 4   # quarters: ties at scale 2
    x.view(-1)[5] = float("nan")
    patches = Patches.of(x, kernel, stride, dilation, padding)
    per_patch = torch.rand(shape[0], 1, patches.shape[-1], generator=generator, dtype=dtype) * 60
    per_patch[0] = 2.0                               # sample 0's codes hit x.5 exactly: ties must go to even
    assert analog_kernels.usable(patches.padded, per_patch)
    for factor in (per_patch, 2.7):
        for bound, rounded in ((None, True), (40.0, True), (40.0, False), (None, False)):
            fast = patches.scaled(factor, bound, rounded)
            reference = _without_kernels(monkeypatch, lambda: patches.scaled(factor, bound, rounded))
            assert _same_bits(fast, reference), (factor if isinstance(factor, float) else "per patch", bound, rounded)
    assert _same_bits(patches.scaled(per_patch), patches.columns() * per_patch)
    with pytest.raises(ValueError, match="patches"):
        analog_kernels.dac_codes(torch.empty(patches.shape, dtype=dtype), patches.padded, per_patch[:, :, 1:].contiguous(),
                                 [*kernel, *stride, *dilation, *patches.view.shape[-2:]], None, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_patch_absmax_kernel_gives_torchs_maxima(dac_kernels, dtype, geometry, monkeypatch):
    """Each patch's max |x| (zero padding included) through the kernel equals torch's separable maxima
    and the reduction over the unfolded columns; a NaN spreads to the patches that hold it."""
    shape, kernel, stride, dilation, padding = geometry
    x = torch.randn(shape, generator=_gen(12), dtype=dtype)
    x.view(-1)[9] = float("nan")
    conv = nn.Conv2d(shape[1], 2, kernel, stride, padding, dilation).to(dtype)
    seen = []

    def record(patches, dim, absmax):
        seen.append(absmax())
        return patches.linear(conv.weight, None)

    as_matmul(conv, x, record)
    _without_kernels(monkeypatch, lambda: as_matmul(conv, x, record))
    columns = F.unfold(x, kernel, dilation, padding, stride).abs()
    reduced = columns.amax(1, keepdim=True).where(~columns.isnan().any(1, keepdim=True), float("nan"))
    assert _same_bits(seen[0], seen[1]) and _same_bits(seen[0], reduced)
    assert seen[0].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("management", [("abs_max", "iterative"), ("abs_max", "none"), ("none", "iterative")])
@pytest.mark.parametrize("out_bits", [9, None])
def test_the_adc_kernel_reads_as_torch(dac_kernels, dtype, management, out_bits, monkeypatch):
    """One read of dense rows and of convolution patches, with outputs that saturate the ADC (so bound
    management re-reads them): the same bits through the compiled DAC and ADC as through torch."""
    noise_management, bound_management = management
    forward = A.ForwardConfig(out_bits=out_bits, out_bound=2.0, out_noise=0.05, noise_management=noise_management,
                              bound_management=bound_management, inp_bound=1.0 if noise_management == "abs_max" else 0.5)
    generator = _gen(14)
    w = torch.rand(5, 12, generator=generator, dtype=dtype) * 2 - 1
    w[0] = 1.0                                               # row 0 sums its inputs: it saturates
    dense = torch.rand(30, 12, generator=generator, dtype=dtype)
    image = torch.rand(6, 3, 9, 9, generator=generator, dtype=dtype)
    conv = nn.Conv2d(3, 5, 2, padding=1).to(dtype)
    saturated = []
    real_adc = analog_kernels.adc_
    monkeypatch.setattr(analog_kernels, "adc_", lambda *args: (lambda hit: saturated.append(hit is not None) or hit)(
        real_adc(*args)))

    def reads():
        return [read_block(dense, w, forward, _stream(3, "fast")),
                as_matmul(conv, image, lambda p, dim, am: read_block(p, w, forward, _stream(3, "fast"), dim, am()))]

    fast = reads()
    assert any(saturated) == (bound_management == "iterative")
    for a, b in zip(fast, _without_kernels(monkeypatch, reads)):
        assert torch.equal(a, b)


def test_a_pcm_model_reads_the_same_through_the_kernels(dac_kernels, monkeypatch):
    """A programmed PCM chip in fast mode gives the same logits with the compiled kernels as with torch
    alone, and a spy proves the kernels ran."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(),
                          nn.Linear(6 * 10 * 10, 10)).eval()
    x = torch.rand(40, 1, 12, 12)
    calls = []
    for name in ("dac_codes", "patch_absmax"):
        monkeypatch.setattr(analog_kernels, name,
                            lambda *args, _run=getattr(analog_kernels, name), _name=name: calls.append(_name) or _run(*args))

    def logits():
        with A.preset("pcm").attach(model, SeedTree(4), "fast") as chip:
            chip.set_time(86400.0)
            return model(x)

    fast = logits()
    assert set(calls) == {"dac_codes", "patch_absmax"}
    assert torch.equal(fast, _without_kernels(monkeypatch, logits))


def test_conv_straight_through_gradients_equal_the_float_convolution():
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2)).double().train()
    x = torch.randn(4, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for analog in (True, False):
        conv.zero_grad()
        x.grad = None
        if analog:
            with _ideal().attach(conv, 0):
                conv(x).square().sum().backward()
        else:
            conv(x).square().sum().backward()
        grads.append([x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()])
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(*grads))


def test_reads_in_cache_sized_pieces_equal_one_read(monkeypatch):
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, padding=1).double().eval()
    with torch.no_grad():
        conv.weight[0] = 1.0                        # channel 0 saturates the ADC: bound management re-reads it
    x = torch.rand(7, 3, 6, 6, dtype=torch.float64)
    cfg = A.TileConfig(forward=A.ForwardConfig(inp_bits=5, out_bits=8, out_noise=0.0, out_bound=6.0))
    with cfg.attach(conv, 0):
        whole = conv(x)
        monkeypatch.setattr(tile_module, "CHUNK_BYTES", 1)     # one sample per piece
        pieces = conv(x)
    assert torch.equal(whole, pieces)
    ideal = A.TileConfig(forward=A.ForwardConfig(inp_bits=None, out_bits=None, out_noise=0.0, out_bound=6.0))
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    with ideal.attach(conv, 0):                      # 27 unit weights on inputs up to 1: saturated, then recovered
        assert torch.allclose(conv(x), expected, atol=1e-9)
    unmanaged = dataclasses.replace(ideal, forward=dataclasses.replace(ideal.forward, bound_management="none"))
    with unmanaged.attach(conv, 0):
        assert not torch.allclose(conv(x), expected, atol=1e-3)


def test_output_noise_follows_the_noise_mode():
    layer = nn.Linear(16, 8).eval()
    x = torch.randn(64, 16, generator=_gen(7))
    cfg = A.preset("output-noise-only")
    outputs = {}
    for mode in ("exact", "fast"):
        with cfg.attach(layer, SeedTree(3), mode) as att:
            assert att.describe()["noise_mode"] == mode
            outputs[mode] = (layer(x), layer(x))
        with cfg.attach(layer, SeedTree(3), mode):
            assert torch.equal(layer(x), outputs[mode][0])          # the same seeds draw the same noise
    assert not torch.equal(outputs["exact"][0], outputs["fast"][0])
    assert not torch.equal(*outputs["fast"])                          # a fresh draw per pass
    with pytest.raises(NoraError, match="unknown noise mode"):
        cfg.attach(layer, 0, "quick")
    spec = nora.NoiseSpec(hardware=cfg, noise_mode="fast")
    with nora.attach(layer, spec, seed=3) as noisy:
        assert noisy.hardware.describe()["noise_mode"] == "fast"


# -- PCM device model -----------------------------------------------------------------------------
def test_pcm_programming_noise_polynomial():
    device = A.DeviceConfig(model="pcm")
    for rel in (0.3, 0.8):
        w = torch.full((200000,), rel, dtype=torch.float64)
        state = pcm.program(w, device, _gen(3))
        g = state["g_prog"][0]
        expected = 0.26348 + 1.9650 * rel - 1.1731 * rel ** 2
        assert g.mean().item() == pytest.approx(rel * 25.0, abs=0.01)
        assert g.std().item() == pytest.approx(expected, rel=0.01)
        # the idle device of the pair is targeted at 0: clipped noise of std c0
        assert state["g_prog"][1].min().item() == 0.0
    assert torch.equal(pcm.prog_std(torch.tensor([5.0]), (1.0, -1.0)), torch.tensor([0.0]))  # clipped at 0


def test_pcm_drift_exponent_mean_spread_and_decay():
    device = A.DeviceConfig(model="pcm")
    rel = 0.5
    g_rel = torch.tensor([rel])
    mu = min(max(-0.0155 * math.log(rel) + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * math.log(rel) - 0.0059, 0.008), 0.045)
    assert pcm.drift_mean(g_rel).item() == pytest.approx(mu)
    assert pcm.drift_std(g_rel).item() == pytest.approx(sd)
    state = pcm.program(torch.full((100000,), rel, dtype=torch.float64), device, _gen(4))
    nu = state["nu"][0]
    assert nu.mean().item() == pytest.approx(mu, abs=3 * sd / math.sqrt(1e5) + 1e-4)
    assert nu.std().item() == pytest.approx(sd, rel=0.02)
    t = 86400.0
    g = pcm.conductances_at(state, t, device)[0]
    assert torch.allclose(g, state["g_prog"][0] * (t / 20.0) ** (-nu))
    assert torch.equal(pcm.conductances_at(state, 5.0, device), state["g_prog"])  # no drift before t0


def test_pcm_read_noise_grows_like_sqrt_log_time():
    device = A.DeviceConfig(model="pcm")
    assert pcm.read_factor(0.0, 250e-9) == 0.0
    t = 3600.0
    assert pcm.read_factor(t, 250e-9) == pytest.approx(math.sqrt(math.log((t + 250e-9) / 500e-9)))
    rel = 0.5
    q = min(0.0088 / rel ** 0.65, 0.2)
    g = torch.full((2, 200000), rel * 25.0, dtype=torch.float64)
    g[1] = 0.0
    qs = torch.full_like(g, q)
    w = pcm.read(g, qs, t, device, _gen(5))
    rel_std = (w / rel).std().item()
    assert rel_std == pytest.approx(q * pcm.read_factor(t, 250e-9), rel=0.01)


def test_global_drift_compensation_restores_output_scale():
    layer = nn.Linear(64, 32, bias=False).double().eval()
    with torch.no_grad():
        layer.weight.fill_(0.5)
    x = torch.rand(200, 64, dtype=torch.float64)
    t = 3.15e7
    outputs = {}
    for comp in (False, True):
        cfg = A.TileConfig(forward=A.ForwardConfig(inp_bits=None, out_bits=None, out_noise=0.0,
                                                   bound_management="none", out_bound=1e9),
                           device=A.DeviceConfig(model="pcm", prog_noise_scale=0.0, read_noise_scale=0.0,
                                                 drift_compensation=comp))
        with cfg.attach(layer, 0) as att:
            y0 = layer(x)
            ones = torch.ones(1, 64, dtype=torch.float64)
            probe0 = layer(ones).sum()
            att.set_time(t)
            outputs[comp] = (layer(x) / y0).mean().item() if not comp else (layer(ones).sum() / probe0).item()
    # uncompensated: E[(t/t0)^-nu] for nu ~ N(mu, s^2) is exp(-mu L + s^2 L^2 / 2), L = ln(t / t0)
    mu, sd = pcm.drift_mean(torch.tensor(1.0)).item(), pcm.drift_std(torch.tensor(1.0)).item()
    L = math.log(t / 20.0)
    assert outputs[False] == pytest.approx(math.exp(-mu * L + sd ** 2 * L ** 2 / 2), rel=0.03)
    assert outputs[True] == pytest.approx(1.0, abs=1e-9)  # the probe's summed response is restored exactly


# -- attach, reseed, detach -----------------------------------------------------------------------
def _lenet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def test_program_once_read_many_and_reseed():
    model = _lenet()
    x = torch.rand(8, 1, 8, 8)
    clean = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = A.preset("pcm").varied("forward.out_noise", 0.0)
    att = cfg.attach(model, SeedTree(1))
    a, b = model(x), model(x)
    assert torch.equal(a, b)                         # t = 0: no read noise; programming drawn once
    assert not torch.allclose(a, clean, atol=1e-4)   # but programming noise is there
    att.set_time(3600.0)
    c, d = model(x), model(x)
    assert not torch.equal(c, d)                     # 1/f read noise is fresh per forward
    att.reseed(SeedTree(1))
    att.set_time(0.0)
    assert torch.equal(model(x), a)                  # same seeds -> same chip
    att.reseed(SeedTree(2))
    assert not torch.equal(model(x), a)              # another chip
    with torch.no_grad():
        model[3].weight.mul_(0.5)                    # changed weights are reprogrammed
    assert not torch.allclose(model(x), a, atol=1e-3)
    with torch.no_grad():
        model[3].weight.mul_(2.0)
    assert att.detach() is model
    assert torch.equal(model(x), clean)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "forward" not in model[0].__dict__
    assert att.describe()["kind"] == "tile" and att.describe()["layers"] == ["0", "3"]


def test_training_mode_gradients_and_weight_modifier():
    model = _lenet().train()
    x = torch.rand(8, 1, 8, 8)
    cfg = _ideal(modifier={"kind": "add_normal", "std": 0.05})
    with cfg.attach(model, 0):
        y1, y2 = model(x), model(x)
        assert not torch.equal(y1, y2)               # fresh weight noise every forward
        y1.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    grad_analog = model[3].weight.grad.clone()
    model.zero_grad()
    with _ideal().attach(model, 0):
        model(x).sum().backward()
    ideal_grad = model[3].weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    assert torch.allclose(ideal_grad, model[3].weight.grad, atol=1e-5)   # straight-through = float gradient
    assert not torch.allclose(grad_analog, ideal_grad, atol=1e-6)


def test_weight_clipping():
    layer = nn.Linear(4, 1, bias=False).double().eval()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -3.0, 0.5, 0.2]]))
    x = torch.eye(4, dtype=torch.float64)
    with _ideal(clip={"kind": "fixed", "value": 1.0}).attach(layer, 0):
        assert torch.allclose(layer(x).squeeze(), torch.tensor([1.0, -1.0, 0.5, 0.2], dtype=torch.float64))


# -- configs and bad input ------------------------------------------------------------------------
def test_presets_yaml_round_trip_and_variation(tmp_path):
    for name in ("ideal", "output-noise-only", "pcm"):
        cfg = A.load_hardware(name)
        assert A.hardware_from_dict(cfg.to_dict()) == cfg
    cfg = A.load_hardware("examples/analog_tile.yaml")
    assert cfg.forward.inp_bits == 8 and cfg.device.model == "pcm" and cfg.clip.kind == "sigma"
    assert A.load_hardware("pcm").varied("forward.out_noise", 0.5).forward.out_noise == 0.5
    assert A.hardware_from_dict({"kind": "analog", "preset": "bss2"}).kind == "ordered_mac"
    assert A.check_times([0, 1, 3600]) == [0.0, 1.0, 3600.0]


@pytest.mark.parametrize("data, message", [
    ({"preset": "pcm", "forward": {"inp_bits": 0}}, "forward.inp_bits"),
    ({"preset": "pcm", "forward": {"out_bits": -3}}, "forward.out_bits"),
    ({"preset": "pcm", "forward": {"out_bound": 0}}, "forward.out_bound"),
    ({"preset": "pcm", "forward": {"inp_bound": -1.0}}, "forward.inp_bound"),
    ({"preset": "memristor"}, "unknown analog preset"),
    ({"preset": "pcm", "forward": {"out_noize": 0.1}}, "out_noize"),
    ({"kind": "ordered_mac", "input_bits": 0}, "input_bits"),
    ({"kind": "ordered_mac", "gain": 0}, "gain"),
    ({"kind": "crossbar"}, "unknown analog hardware kind"),
    ({"preset": "pcm", "mapping": {"max_in": 0}}, "mapping.max_in"),
])
def test_bad_configs(data, message):
    with pytest.raises(NoraError, match=message):
        A.hardware_from_dict(data)


def test_bad_times_layers_and_keys():
    for times, message in (([1, 1], "strictly increasing"), ([10, 5], "strictly increasing"),
                           ([-1], ">= 0"), ([], "non-empty")):
        with pytest.raises(NoraError, match=message):
            A.check_times(times)
    with pytest.raises(NoraError, match="unknown analog preset"):
        A.load_hardware("no-such-chip")
    with pytest.raises(NoraError, match="unknown hardware parameter 'forward.out_noize'"):
        A.preset("pcm").varied("forward.out_noize", 1.0)
    att = A.preset("pcm").attach(_lenet(), 0)
    with pytest.raises(NoraError, match=">= 0"):
        att.set_time(-5)
    att.detach()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3))
    with pytest.raises(NoraError, match=r"layer '1' \(ConvTranspose2d\)"):
        A.preset("pcm").attach(model, 0)
    with pytest.raises(NoraError, match="grouped convolution"):
        A.preset("pcm").attach(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), 0)
    with pytest.raises(NoraError, match="matches no layer"):
        A.hardware_from_dict({"preset": "pcm", "layers": ["fc9"]}).attach(_lenet(), 0)
    with pytest.raises(NoraError, match="no Linear, Conv1d or Conv2d"):
        A.preset("pcm").attach(nn.Sequential(nn.ReLU()), 0)
    assert "forward" not in model[0].__dict__      # a refused attach leaves the model untouched
    from nora.models import build_model

    folded = build_model("resnet8-qat", preset="fpga")  # BatchNorms folded into the convolutions
    with pytest.raises(NoraError, match="its BatchNorm is folded into it"):
        A.preset("pcm").attach(folded, 0)
