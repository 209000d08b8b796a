"""`edgetune fed`: fleet tuning on Flower (simulated on one machine, or a Flower app for a real fleet)."""

import argparse
from pathlib import Path

from edgetune.cli.common import add_command, config_from_args


def run_simulate(args: argparse.Namespace) -> None:
    """Simulate the fleet and print where its outputs are."""
    from edgetune.fed.config import FleetConfig
    from edgetune.fed.simulation import simulate

    summary = simulate(config_from_args(FleetConfig, args), Path(args.data_dir))
    final = summary["final"]
    shown = [f"{k} {final[k]:.4g}" for k in ("train_loss", "eval_loss", "exact_match") if final.get(k) is not None]
    print(
        f"{summary['rounds']} rounds in {summary['wall_s']:.1f} s: {', '.join(shown)}; adapter in {summary['adapter']}"
    )


def run_app(args: argparse.Namespace) -> None:
    """Write a Flower app folder for `flwr run` (paths made absolute: Flower runs the apps elsewhere)."""
    from edgetune.fed.config import FleetConfig
    from edgetune.fed.flower_app import write_app

    absolute = {k: Path(getattr(args, k)).resolve() for k in ("bundle", "out", "eval_data") if getattr(args, k)}
    path = write_app(Path(args.app_dir), config_from_args(FleetConfig, args, **absolute))
    print(f"wrote {path}: start the fleet with `flwr run {args.app_dir} <federation>` (README, Fleet tuning)")


def _fleet_flags(p: argparse.ArgumentParser) -> None:
    """The FleetConfig flags shared by `simulate` and `app`."""
    from edgetune.fed.aggregation import STRATEGIES

    p.add_argument("bundle", help="the server's bundle (every node holds one of the same base model)")
    p.add_argument("-o", "--output", dest="out", required=True, help="the server's run folder")
    p.add_argument("--clients", type=int, default=2, help="the fleet's size (the first round waits for all)")
    p.add_argument("--strategy", choices=STRATEGIES, default="fedavg")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10, help="optimizer steps per client per round")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-clients", type=int, default=1, help="replies a round needs to update the global adapter")
    p.add_argument("--round-timeout", type=float, default=3600.0, help="seconds to wait for a round's replies")
    p.add_argument("--eval-data", default=None, help="held-out prompt/completion JSONL, evaluated by the server")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N rounds")
    p.add_argument("--eval-limit", type=int, default=100, help="exact match on the first N examples (0: loss only)")
    p.add_argument("--dp-clip", type=float, default=0.0, help="clip each client's update to this L2 norm (DP)")
    p.add_argument("--dp-noise", type=float, default=0.0, help="Gaussian noise multiplier on the average (DP)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="the δ at which ε is reported")
    p.add_argument("--secagg", action="store_true", help="secure aggregation with Flower's SecAgg+ (fedavg, ffa)")
    p.add_argument(
        "--secagg-threshold", type=float, default=0.5, help="SecAgg+: fraction of a round's nodes that unmask a node"
    )
    p.add_argument(
        "--secagg-clip-range", type=float, default=1.0, help="SecAgg+: quantizer range; every uploaded value in ±this"
    )
    p.add_argument("--secagg-max-examples", type=int, default=1000, help="SecAgg+: the most examples a node may weigh")


def register(sub) -> None:
    """Add `fed simulate` and `fed app`."""
    fed = sub.add_parser("fed", help="fleet tuning: federated LoRA on Flower")
    commands = fed.add_subparsers(dest="fed_command", required=True)
    p = add_command(commands, "simulate", run_simulate, help="simulate a fleet on this machine, clients in turn")
    _fleet_flags(p)
    p.add_argument("--data-dir", required=True, help="one JSONL file per client (the first --clients, by name)")
    p = add_command(commands, "app", run_app, help="write a Flower app folder to run on the Deployment Engine")
    _fleet_flags(p)
    p.add_argument("--app-dir", required=True, help="the Flower app folder to write (for flwr run)")
