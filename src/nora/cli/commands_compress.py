"""Hardware-aware compression commands: ``profile`` (roofline + per-layer latency) and ``compress`` (Galen search)."""

from __future__ import annotations

from nora.cli.common import console, err_console, print_table

_KERNEL_NOTE = {
    "fp32": "float32 kernel", "int8": "int8 kernel (bits below 8 run on it too: no speed-up from them)",
    "bitserial": "TVM bit-serial kernel (sub-8-bit, bit-packed popcount)",
    "estimated": "NOT executed: no backend runs this configuration, latency from the bit-operations cost model",
}


def _kernel_lines(kernels: dict) -> None:
    for kind, count in kernels.items():
        console.print(f"  {count:3d} layers: {kind} - {_KERNEL_NOTE.get(kind, kind)}", highlight=False)


def cmd_profile(args) -> None:
    from nora.report.files import save
    from nora.workflows.compression import profile

    result = profile(args.model, checkpoint=args.checkpoint, input_shape=args.input_shape, num_classes=args.classes,
                     out_dir=args.out, backends=args.backend, bits=args.bits, warmup=args.warmup,
                     repeats=args.repeats, max_bytes=args.max_bytes)
    data = result.profile.data
    roof = data["roofline"]
    console.print(f"peak fp32: {roof['peak_core'] / 1e9:.1f} GFLOP/s on 1 core, {roof['peak_all'] / 1e9:.1f} on "
                  f"{roof['threads']} threads (a shared machine lowers the latter); int8 peak "
                  f"{roof['peak_int8_core'] / 1e9:.0f} Gop/s on 1 core", highlight=False)
    for title, columns, rows in result.tables():
        print_table(title, columns, rows)
    for w in data["whole_model"]:
        if w["ok"]:
            console.print(f"whole model on {w['backend']} (fp32): {w['seconds'] * 1e6:.1f} us (cv {w['cv']:.2f}, "
                          f"compiled in {w['compile_s']:.2f} s)", highlight=False)
        else:
            console.print(f"whole model on {w['backend']}: failed ({w['error']})", highlight=False)
    console.print("kernels that executed per backend and bit width: " + "; ".join(
        f"{k}: {', '.join(v)}" for k, v in data["kernels"].items()), highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in save(result)), soft_wrap=True)


def _progress(record: dict) -> None:
    err_console.print(f"episode {record['episode']:4d}  acc {record['accuracy']:.4f}  latency x"
                      f"{record['latency_ratio']:.3f}  reward {record['reward']:+.4f}"
                      + (f"  ({record['estimated_layers']} layers estimated)" if record["estimated_layers"] else ""),
                      highlight=False)


#: The flags that say what a search is (those of how it runs, --engine/--address/--workers, come apart).
_SEARCH_FLAGS = ("agent", "mode", "target", "episodes", "reward", "beta", "backend", "round_to", "max_sparsity",
                 "eval_samples", "sensitivity_samples", "ddpg_warmup", "batch", "timing_repeats", "retrain_epochs",
                 "retrain_lr", "retrain_samples", "data_root", "seed")


def cmd_compress(args) -> None:
    from nora.compress.workflow import read_settings_file
    from nora.errors import NoraError
    from nora.report.files import save
    from nora.workflows.compression import compress, resume

    if args.resume:
        given = [key for key in ("checkpoint", "config", "out", *_SEARCH_FLAGS) if getattr(args, key) is not None]
        if given:
            raise NoraError(f"--resume continues the folder's own search; --{given[0].replace('_', '-')} cannot "
                            "change it (only --engine, --address and --workers can)")
        report = resume(args.resume, progress=_progress, engine=args.engine, address=args.address, workers=args.workers)
    else:
        options = read_settings_file(args.config) if args.config else {}
        options.update({key: getattr(args, key) for key in ("checkpoint", *_SEARCH_FLAGS, "workers", "engine",
                                                             "address") if getattr(args, key) is not None})
        checkpoint = options.pop("checkpoint", None)
        if not checkpoint:
            raise NoraError("give --checkpoint RUN (a trained run folder), a --config with `checkpoint:`, "
                            "or --resume SEARCH_FOLDER")
        workers, batch = options.get("workers", 1), options.get("batch", 1)
        if isinstance(workers, int) and isinstance(batch, int) and workers > batch:
            err_console.print(f"note: --workers {workers} but --batch {batch}: at most {batch} candidate(s) "
                              "are evaluated at a time", highlight=False)
        report = compress(checkpoint, args.out, progress=_progress, **options)
    result = report.data
    if not result["finished"]:
        console.print(f"stopped after {result['episodes']} episodes; continue with nora compress --resume "
                      f"{result['out']}")
        return
    written = save(report)
    for title, columns, rows in report.tables():
        print_table(title, columns, rows)
    final, s = result["final"], result["settings"]
    console.print(
        f"latency {final['latency_s'] * 1e6:.1f} us = {final['latency_ratio']:.3f} x the original "
        f"({final['reference_latency_s'] * 1e6:.1f} us; target {s['target']}"
        f"{'' if final['met_target'] else ', NOT met'}); test accuracy {final['reference_test_accuracy']:.4f} -> "
        f"{final['test_accuracy_before_retraining']:.4f} compressed -> {final['test_accuracy']:.4f} after "
        f"{s['retrain_epochs']} retraining epoch(s)", highlight=False)
    _kernel_lines(final["kernels"])
    if final["failures"]:
        console.print(f"{len(final['failures'])} compile failures were recorded (see episodes.json); "
                      "the search went on")
    console.print(f"candidates evaluated {_where(result['execution'])}; latency-cache hit rate "
                  f"{final['cache_hit_rate']:.0%}; wrote {', '.join(str(p) for p in written)}", highlight=False)


def _where(run: dict) -> str:
    if run.get("engine") == "local":
        return f"on a local pool of {run['workers']} processes"
    if run.get("engine") == "ray":
        cluster = run["address"] or f"local instance, {run['workers']} CPUs"
        return f"as Ray tasks ({cluster}, started in {run['startup_s']:.1f} s)"
    return "in this process"


def register(sub) -> None:
    p = sub.add_parser("profile", help="host roofline and per-layer latency, arithmetic intensity and bound")
    p.add_argument("--model", help="model name (see `nora sites --model`)")
    p.add_argument("--checkpoint", help="or a trained run folder")
    p.add_argument("--input-shape", type=int, nargs="+", help="input shape without batch, e.g. 3 32 32")
    p.add_argument("--classes", type=int, help="number of classes")
    p.add_argument("--backend", nargs="+", default=["tvm", "onnxruntime"], help="tvm, onnxruntime, bitops")
    p.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4, 2],
                   help="bit widths to compare per layer (32 = float; weights and activations alike)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (mean and spread over them)")
    p.add_argument("--max-bytes", type=int, help="largest working set of the bandwidth sweep (default 4 x L3)")
    p.add_argument("--out", help="output folder (default runs/profile-<model>-<shape>)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("compress", help="search per-layer pruning + quantisation against measured latency (Galen)")
    p.add_argument("--checkpoint", help="trained run folder to compress")
    p.add_argument("--resume", metavar="FOLDER",
                   help="continue a search folder (its settings; only --engine, --address, --workers may change)")
    p.add_argument("--config", help="YAML file of these settings (keys with underscores); flags override it")
    p.add_argument("--out", help="search folder (default runs/compress-<model>-<agent>[-<mode>])")
    p.add_argument("--target", type=float, help="latency target as a share of the original, in (0, 1] (default 0.25)")
    p.add_argument("--agent", choices=["ddpg", "random", "greedy"], help="search agent (default ddpg)")
    p.add_argument("--mode", choices=["joint", "prune", "quant"], help="what the agent decides (default joint)")
    p.add_argument("--episodes", type=int, help="evaluated policies (default 200)")
    p.add_argument("--backend", choices=["tvm", "onnxruntime", "bitops"],
                   help="where latency is measured (default tvm; bitops = cost model, nothing executed)")
    p.add_argument("--reward", choices=["abs", "hinge"], help="abs: acc - beta |lat/(target lat_ref) - 1| (default)")
    p.add_argument("--beta", type=float, help="latency weight of the reward (default 5)")
    p.add_argument("--round-to", type=int, help="pruned channel counts are multiples of this (default 8)")
    p.add_argument("--max-sparsity", type=float, help="largest pruning ratio per layer (default 0.8)")
    p.add_argument("--eval-samples", type=int, help="validation samples (held out of the training split; default 1000)")
    p.add_argument("--sensitivity-samples", type=int, help="samples for the KL sensitivity (default 128)")
    p.add_argument("--ddpg-warmup", type=int, help="DDPG episodes of random actions before learning (default 10)")
    p.add_argument("--batch", type=int, help="candidates proposed per agent step (default 1)")
    p.add_argument("--workers", type=int, help="candidates evaluated at once (default 1; give --batch as many)")
    p.add_argument("--engine", choices=["local", "ray", "sequential"],
                   help="where candidates' accuracy is evaluated: local fork pool (default), Ray tasks, or this "
                        "process; latency is always measured here. May change on --resume")
    p.add_argument("--address", help="Ray cluster host:port (default: a local Ray instance of --workers CPUs)")
    p.add_argument("--timing-repeats", type=int, help="timed rounds per layer configuration (default 5)")
    p.add_argument("--retrain-epochs", type=int, help="fine-tuning epochs of the chosen policy (default 1)")
    p.add_argument("--retrain-lr", type=float, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--retrain-samples", type=int, help="training samples for fine-tuning (default all)")
    p.add_argument("--data-root", help="where the checkpoint's data set lies (config: data.root)")
    p.add_argument("--seed", type=int, help="root seed (default 0)")
    p.set_defaults(func=cmd_compress)
