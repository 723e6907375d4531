"""``nora uncertainty``: calibration, OOD detection and the entropy split of a checkpoint, clean,
under data shift and under hardware noise."""

from __future__ import annotations

from nora.cli.common import analysis_config, check_sigmas, err_console, noise_args, noise_config, print_result
from nora.errors import NoraError
from nora.progress import Reporter


def cmd_uncertainty(args) -> None:
    from nora.report.files import save
    from nora.workflows.uncertainty import uncertainty

    if args.repeats < 1:
        raise NoraError(f"--repeats must be >= 1, got {args.repeats}")
    if args.bins < 1:
        raise NoraError(f"--bins must be >= 1, got {args.bins}")
    sigmas = check_sigmas(args.sigma) if args.sigma else []
    if not sigmas and args.noise_file:  # --config FILE: its eval.sigmas stand in for --sigma
        sigmas = list(analysis_config(args).eval.sigmas)
    noise_cfg = noise_config(args) if sigmas else None
    with Reporter(err_console, unit="passes") as progress:
        result = uncertainty(
            args.checkpoint, ood=args.ood, ood_root=args.ood_root, ood_subset=args.ood_subset,
            data_root=args.data_root, test_subset=args.test_subset, shifts=args.shift or [], noise_cfg=noise_cfg,
            sigmas=sigmas, repeats=args.repeats, seed=args.seed, bins=args.bins, per_head=args.per_head,
            output=args.output, device=args.device, progress=progress)
    print_result(result, as_json=args.json, written=save(result))
    for message in result.messages():  # on stderr, so that --json output stays one document
        err_console.print(message, soft_wrap=True)


def register(sub) -> None:
    p = sub.add_parser("uncertainty", help="calibration, OOD detection and aleatoric/epistemic uncertainty of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    p.add_argument("--ood", help="out-of-distribution data set (its test split), e.g. fashion-mnist")
    p.add_argument("--ood-root", help="where the OOD data lies (default: beside the training data, or NORA_DATA)")
    p.add_argument("--ood-subset", type=int, help="use N OOD samples spread over the set")
    p.add_argument("--shift", action="append", metavar="KIND:LEVELS",
                   help="data shift, e.g. gaussian-noise:1..5 or blur:1,3 (repeatable)")
    noise_args(p, sigma_help="noise level(s) for uncertainty under hardware noise (optional; with --analog or "
                             "--weight-sigma, 0 gives the hardware model alone)")
    p.add_argument("--repeats", type=int, default=5, help="noise realisations per sigma")
    p.add_argument("--bins", type=int, default=15, help="confidence bins for ECE and the reliability diagram")
    p.add_argument("--per-head", action="store_true", help="also report each head's accuracy (multi-head models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="where the test data lies (config: data.root)")
    p.add_argument("--test-subset", type=int, help="evaluate on N test samples spread over the set")
    p.add_argument("--output", help="output folder (default: <run>/uncertainty)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.set_defaults(func=cmd_uncertainty)
