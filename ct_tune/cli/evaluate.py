"""``ct-tune evaluate``: score one beta profile on the val split, exactly as a study trial does."""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune import InputError
from ct_tune.cli._common import CommandResult, add_command, print_table
from ct_tune.cli._options import model_section

EXAMPLES = """\
examples:
  ct-tune evaluate --checkpoint checkpoints/model.pt --data digits --beta 0.9
  ct-tune evaluate --checkpoint model.pt --data digits --beta layer1=0.9,layer3=0.8 --granularity stage
  ct-tune evaluate --checkpoint model.pt --data digits --profile profiles/best.json --objective accuracy,adversarial
  ct-tune evaluate --model resnet18 --weights IMAGENET1K_V1 --data cifar10 --beta 0.9 --objective probe
"""


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "evaluate",
        _evaluate,
        help="score one beta profile on the val split",
        description=__doc__ + "\n" + EXAMPLES,
    )
    parser.add_argument("--checkpoint", help="checkpoint written by ct-tune pretrain (or, with --model, its weights)")
    parser.add_argument("--model", help="model name: built-in, torchvision, or package.module:function")
    parser.add_argument("--weights", help="torchvision weights, e.g. IMAGENET1K_V1")
    parser.add_argument("--data", default="digits", help="dataset name (default digits)")
    parser.add_argument("--data-dir", help="where datasets live (default $CT_TUNE_DATA, else ~/.cache/ct-tune/data)")
    parser.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0: the same split as studies)")
    parser.add_argument("--val-size", type=int, help="score a stratified subset of val of this size")
    betas = parser.add_mutually_exclusive_group(required=True)
    betas.add_argument("--beta", help="one beta for every unit (0.9), or unit=beta pairs (layer1=0.9,layer3=0.8)")
    betas.add_argument("--profile", help="a beta profile JSON (ct-tune study export)")
    parser.add_argument("--granularity", default="global", help="units for --beta pairs: global, stage, block, site")
    parser.add_argument("--c", type=float, default=0.5, help="CT mixing coefficient c in [0, 1] (default 0.5)")
    parser.add_argument("--objective", default="accuracy", help="accuracy, probe, adversarial (comma-separated)")
    attack = parser.add_argument_group("adversarial objective")
    attack.add_argument("--attack", choices=["pgd", "autoattack"], default="pgd")
    attack.add_argument("--norm", choices=["linf", "l2"], default="linf")
    attack.add_argument("--eps", default="8/255", help="attack budget in pixel units (default 8/255)")
    attack.add_argument("--steps", type=int, help="default 10 for pgd, 100 for autoattack (the original's)")
    attack.add_argument("--step-size", help="default 2.5 * eps / steps")
    attack.add_argument("--restarts", type=int, default=1)
    attack.add_argument("--no-random-start", action="store_true")
    attack.add_argument("--n", type=int, default=1000, help="attacked val samples (a fixed, seeded subset)")
    attack.add_argument(
        "--attacks", help="autoattack's attacks, comma-separated (default the standard apgd-ce,apgd-t,fab-t,square)"
    )
    attack.add_argument("--n-queries", type=int, help="autoattack's Square queries (default 5000)")
    probe = parser.add_argument_group("probe objective")
    probe.add_argument("--feature-layer", help="module whose input is the feature (default: the final classifier)")
    probe.add_argument("--l2", type=float, default=1e-3, help="probe L2 regularisation (default 1e-3)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="reduced precision on CUDA"
    )
    parser.add_argument("--batch-size", type=int, default=256)


def parse_beta(text: str) -> float | dict[str, float]:
    """'0.9' or 'layer1=0.9,layer3=0.8'."""
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise InputError(f"--beta {text!r} is not a number; give 0.9 or unit=beta pairs like layer1=0.9") from None
    pairs: dict[str, float] = {}
    for item in text.split(","):
        unit, _, value = item.partition("=")
        try:
            pairs[unit.strip()] = float(value)
        except ValueError:
            raise InputError(f"--beta: {item!r} is not unit=beta (e.g. layer1=0.9)") from None
    return pairs


def _objectives(args: argparse.Namespace) -> list[dict[str, Any]]:
    objectives = []
    for name in (part.strip() for part in args.objective.split(",") if part.strip()):
        if name == "adversarial":
            objectives.append(
                {
                    "name": name,
                    "attack": args.attack,
                    "norm": args.norm,
                    "eps": args.eps,
                    "steps": args.steps,
                    "step_size": args.step_size,
                    "restarts": args.restarts,
                    "random_start": not args.no_random_start,
                    "n": args.n,
                    "attacks": args.attacks.split(",") if args.attacks else None,
                    "n_queries": args.n_queries,
                }
            )
        elif name == "probe":
            objectives.append({"name": name, "feature_layer": args.feature_layer, "l2": args.l2})
        else:
            objectives.append({"name": name})
    return objectives


def _evaluate(args: argparse.Namespace) -> CommandResult:
    from ct_tune.bench import evaluate_profile
    from ct_tune.steering import BetaProfile

    profile = BetaProfile.load(args.profile) if args.profile else None
    payload = evaluate_profile(
        model=model_section(args),
        data={
            "name": args.data,
            "data_dir": args.data_dir,
            "download": args.download,
            "seed": args.seed,
            "val_size": args.val_size,
        },
        beta=None if profile else parse_beta(args.beta),
        profile=profile,
        granularity=args.granularity,
        c=args.c,
        objectives=_objectives(args),
        run={"device": args.device, "precision": args.precision, "batch_size": args.batch_size},
    )
    results, applied, c, granularity = payload["results"], payload["betas"], payload["c"], payload["granularity"]
    title = f"{args.checkpoint or args.model} on {args.data} (val)"

    def render() -> None:
        rows = []
        for name, result in results.items():
            skip = ("name", "value", "seconds", "compute_seconds", "top1", "robust_accuracy", "n")
            extras = {k: v for k, v in result.items() if isinstance(v, float) and k not in skip}
            extra_text = ", ".join(f"{k} {v:.4f}" for k, v in extras.items())
            rows.append([name, result["value"], result.get("n"), extra_text, f"{result['seconds']:.1f}s"])
        print_table(title, ["objective", "value", "n", "details", "time"], rows)
        shown = [f"{unit}={beta:.3f}" for unit, beta in applied.items()]
        print(f"betas ({granularity}, c={c:g}): " + ", ".join(shown[:12]) + (" ..." if len(shown) > 12 else ""))

    return CommandResult(payload, render)
