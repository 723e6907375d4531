import json

import pytest
from torch import nn

from nora.cli import main
from nora.errors import NoraError
from nora.perf import latency as lat
from nora.perf.latency import LatencyCache, LatencyMeter, LayerSpec, time_callable
from nora.perf.layers import layer_specs
from nora.perf.roofline import Roofline, cache_levels, level_of, place


def test_layer_spec_counts_macs_bitops_and_bytes():
    spec = LayerSpec("conv", 8, 16, kernel=3, stride=2, padding=1, height=10, width=10, w_bits=4, a_bits=2)
    assert spec.out_hw == (5, 5)
    assert spec.macs == 16 * 5 * 5 * 8 * 9
    assert spec.bitops == spec.macs * 8
    # inputs at 2 bits, weights at 4 bits, outputs as 4-byte accumulators
    assert spec.bytes_moved() == 8 * 100 * 2 // 8 + 16 * 8 * 9 * 4 // 8 + 16 * 25 * 4
    assert spec.key() != LayerSpec("conv", 8, 16, kernel=3, stride=2, padding=1, height=10, width=10).key()


def test_layer_specs_follow_the_forward_shapes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    specs = layer_specs(model, (1, 8, 8), {"4": (8, 8)})
    assert [name for name, _ in specs] == ["0", "4"]
    assert (specs[0][1].height, specs[0][1].width) == (8, 8)
    assert (specs[1][1].in_channels, specs[1][1].w_bits, specs[1][1].a_bits) == (64, 8, 8)


def test_time_callable_reports_rounds_and_refuses_bad_counts():
    timing = time_callable(lambda: sum(range(100)), warmup=1, repeats=4, number=3)
    assert timing.repeats == 4 and len(timing.samples) == 4 and timing.mean > 0 and timing.cv >= 0
    with pytest.raises(NoraError, match="repeats"):
        time_callable(lambda: None, repeats=0)


def test_cache_hits_and_survives_a_reload(tmp_path):
    path = tmp_path / "cache.json"
    spec = LayerSpec("linear", 16, 8, w_bits=8, a_bits=8)
    meter = LatencyMeter("onnxruntime", LatencyCache(path), warmup=1, repeats=2)
    first = meter.layer(spec)
    again = meter.layer(spec)
    assert (meter.cache.hits, meter.cache.misses) == (1, 1) and again == first
    meter.cache.save()
    reloaded = LatencyMeter("onnxruntime", LatencyCache(path), warmup=1, repeats=2)
    assert reloaded.layer(spec) == first and reloaded.compile_s == 0.0 and reloaded.cache.hit_rate == 1.0
    assert json.loads(path.read_text())["entries"]


def test_onnxruntime_runs_fp32_and_int8_and_sub8_bit_on_int8():
    meter = LatencyMeter("onnxruntime", warmup=1, repeats=2)
    kinds = {b: meter.layer(LayerSpec("conv", 8, 8, kernel=3, padding=1, height=8, width=8, w_bits=b, a_bits=b))
             for b in (32, 8, 4)}
    assert {b: k.kernel for b, k in kinds.items()} == {32: "fp32", 8: "int8", 4: "int8"}
    assert all(k.measured and k.seconds > 0 and k.overhead_s > 0 for k in kinds.values())
    assert kinds[4] == kinds[8]  # the same int8 kernel executes, so it is one cache entry
    mixed = meter.layer(LayerSpec("conv", 8, 8, kernel=3, padding=1, height=8, width=8, w_bits=2, a_bits=32))
    assert mixed == kinds[32]  # a float side means the float kernel
    assert meter.cache.hits == 2


def test_bitops_backend_is_deterministic_and_marked_estimated():
    spec = LayerSpec("conv", 8, 8, kernel=3, height=8, width=8, w_bits=4, a_bits=4)
    a, b = LatencyMeter("bitops").layer(spec), LatencyMeter("bitops").layer(spec)
    assert a == b and not a.measured and a.kernel == "estimated" and a.seconds == spec.bitops / 1e12


def test_a_kernel_that_fails_to_compile_is_recorded_and_estimated(monkeypatch):
    real = lat._KERNELS["onnxruntime"]

    def failing(spec):
        if spec.quantised:
            raise RuntimeError("no kernel for you")
        return real(spec)

    monkeypatch.setitem(lat._KERNELS, "onnxruntime", failing)
    meter = LatencyMeter("onnxruntime", warmup=1, repeats=2)
    spec = LayerSpec("linear", 32, 16, w_bits=4, a_bits=4)
    result = meter.layer(spec)
    assert result.kernel == "estimated" and not result.measured and "no kernel for you" in result.note
    executed = LayerSpec("linear", 32, 16, w_bits=8, a_bits=8)  # every sub-8-bit layer runs the int8 kernel
    assert meter.failures == [{"layer": executed.key(), "backend": "onnxruntime",
                               "error": "RuntimeError: no kernel for you"}]
    assert meter.layer(LayerSpec("linear", 32, 16, w_bits=2, a_bits=2)).kernel == "estimated"
    assert len(meter.failures) == 1  # the failed kernel is not compiled again
    fp32 = meter.layer(LayerSpec("linear", 32, 16))
    assert result.seconds == pytest.approx(fp32.seconds * 16 / 1024)


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(NoraError, match="unknown latency backend 'gpu'"):
        LatencyMeter("gpu")


def test_tvm_runs_fp32_int8_and_bitserial_kernels():
    pytest.importorskip("tvm")
    meter = LatencyMeter("tvm", warmup=1, repeats=2)
    conv = dict(kind="conv", in_channels=8, out_channels=8, kernel=3, padding=1, height=6, width=6)
    kinds = {b: meter.layer(LayerSpec(**conv, w_bits=b, a_bits=b)).kernel for b in (32, 8, 2)}
    assert kinds == {32: "fp32", 8: "int8", 2: "bitserial"}
    # bit packing needs input channels in multiples of 8: 6 channels run on the int8 kernel
    assert meter.layer(LayerSpec("linear", 6, 4, w_bits=2, a_bits=2)).kernel == "int8"
    assert meter.layer(LayerSpec("linear", 16, 4, w_bits=3, a_bits=3)).kernel == "bitserial"
    assert not meter.failures


def _roof():
    return Roofline(peak_core=100e9, peak_all=200e9, peak_int8_core=400e9, threads=2,
                    levels=[("L1", 32 * 1024), ("L2", 1024 ** 2)], bandwidth={"L1": 200e9, "L2": 100e9, "memory": 20e9})


def test_place_names_the_bound():
    roof = _roof()
    fc = LayerSpec("linear", 64, 64)  # intensity ~0.5 FLOP/B: bandwidth bound
    flops = 2 * fc.macs
    point = place("fc", fc, lat.LayerLatency(fc.key(), "x", "fp32", flops / 80e9, 0.0), roof)
    assert point.level == "L1" and point.bound == "L1 bandwidth"
    assert point.attainable == pytest.approx(point.intensity * 200e9)
    conv = LayerSpec("conv", 32, 32, kernel=3, padding=1, height=16, width=16)  # intensity > 100: compute bound
    flops = 2 * conv.macs
    point = place("conv", conv, lat.LayerLatency(conv.key(), "x", "fp32", flops / 90e9, 0.0), roof)
    assert point.bound == "compute" and point.share_of_roof == pytest.approx(0.9)
    slow = place("conv", conv, lat.LayerLatency(conv.key(), "x", "fp32", flops / 1e9, 0.0), roof)
    assert slow.bound == "overhead"
    int8 = place("conv", conv, lat.LayerLatency(conv.key(), "x", "int8", flops / 90e9, 0.0), roof)
    assert int8.attainable > point.attainable  # int8 kernels meet the int8 roof


def test_levels_are_sorted_and_assign_working_sets():
    levels = cache_levels()
    assert [size for _, size in levels] == sorted(size for _, size in levels)
    assert level_of(1, levels) == levels[0][0] and level_of(10 * levels[-1][1], levels) == "memory"


def test_profile_writes_numbers_and_plots(tmp_path):
    from nora.models import build_model
    from nora.perf.profile import profile_model
    from nora.report.files import save
    from nora.workflows.results import ProfileResult

    model = build_model("lenet5", input_shape=(1, 8, 8), num_classes=3)
    measured = profile_model(model, (1, 8, 8), backends=["onnxruntime", "bitops"], bits=[32, 8],
                             warmup=1, repeats=2, max_bytes=64 * 1024)
    written = save(ProfileResult(tmp_path, measured))  # the report writer draws and writes it
    result = measured.data
    assert len(result["layers"]) == 2 * 2 * 5 and len(written) == 3 + 2 + 1
    assert result["kernels"]["onnxruntime 8-bit"] == ["int8"] and result["kernels"]["bitops 32-bit"] == ["estimated"]
    assert result["roofline"]["peak_core"] > 0 and result["roofline"]["sweep"]
    assert result["whole_model"][0]["ok"]
    for name in ("profile.json", "layers.csv", "bandwidth.csv", "roofline-onnxruntime.png", "bandwidth.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_profile_refuses_bad_bits():
    from nora.perf.profile import profile

    with pytest.raises(NoraError, match=r"bit widths must be 32 \(float\) or 1-8, got 12"):
        profile("lenet5", bits=[12], backends=["bitops"])
    assert main(["profile", "--model", "lenet5", "--bits", "12", "--backend", "bitops"]) == 2


def test_interleaved_rounds_alternate_the_passes_and_pair_their_ratios():
    """Each round calls every pass once, in order, after one warm-up call each, with ``sync`` closing
    every timing; the paired median is the median of same-round ratios, not a ratio of minima."""
    calls, syncs = [], []
    passes = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    rounds = lat.interleaved_rounds(passes, 3, sync=lambda: syncs.append(1))
    assert calls == ["a", "b"] * 4 and len(syncs) == 1 + 2 * 3
    assert [len(v) for v in rounds.values()] == [3, 3] and all(t >= 0 for v in rounds.values() for t in v)
    times = {"clean": [1.0, 2.0, 1.0], "noisy": [1.5, 2.2, 3.0]}
    assert lat.paired_median(times, "noisy", "clean") == pytest.approx(1.5)  # ratios 1.5, 1.1, 3.0
    with pytest.raises(NoraError, match="rounds >= 1"):
        lat.interleaved_rounds(passes, 0)
