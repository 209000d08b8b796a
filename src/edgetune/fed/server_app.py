"""The fleet's Flower ServerApp: rounds of the chosen strategy, the global adapter written after each.

On Flower's Deployment Engine the run config (`[tool.flwr.app.config]` of the app folder
`edgetune fed app` writes, or `flwr run --run-config`) is a `FleetConfig`. The server
holds the bundle too: it starts from the bundle's initial adapter (so every node's A is
the same seeded A), sends each node's base-model hash check with the round's config,
writes the global adapter after every round and evaluates it on held-out data. With
`secagg` the rounds run Flower's SecAgg+ workflow instead (`fed.secagg_server`).
"""

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from edgetune.common.bundle import open_bundle
from edgetune.common.errors import ConfigError
from edgetune.common.names import METRICS
from edgetune.common.peft import DELTA_SUFFIX, config_scaling
from edgetune.fed.config import FleetConfig
from edgetune.fed.payload import BASE_SHA, check_strategy_fits, sent_keys, to_record
from edgetune.fed.secagg_server import run_secagg_rounds
from edgetune.fed.server_rounds import RoundRecorder
from edgetune.fed.strategies import make_strategy
from edgetune.runtime.bundle_checkpoint import bundle_adapter

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: the run config is the fleet's config."""
    run_fleet(grid, FleetConfig.from_run_config(dict(context.run_config)))


def run_fleet(grid: Grid, config: FleetConfig) -> dict:
    """Run `config.rounds` rounds over the nodes of `grid`; return the run's summary."""
    if (config.out / METRICS).exists():
        raise ConfigError("out", f"{config.out} already holds a fleet run (choose another output)")
    manifest = open_bundle(config.bundle).manifest  # trusted keys: $EDGETUNE_TRUSTED_KEYS
    check_strategy_fits(config.strategy, manifest, config.bundle)
    initial = bundle_adapter(config.bundle, manifest)
    deltas = {k: v for k, v in initial.items() if k.endswith(DELTA_SUFFIX)}
    recorder = RoundRecorder(config, manifest, initial)
    train_config = {
        "strategy": config.strategy,
        "local_steps": config.local_steps,
        "lr": float(config.lr),
        "batch_size": config.batch_size,
        "seq_len": config.seq_len,
        "seed": config.seed,
        BASE_SHA: manifest["source"]["weights_sha256"],
    }
    keys = sent_keys(config.strategy, manifest)
    if config.secagg:
        run_secagg_rounds(grid, config, keys, initial, recorder, train_config)
        return recorder.finish()
    strategy = make_strategy(
        config, config.clients, config_scaling(manifest["adapter_config"]), deltas, recorder.aggregate_metrics
    )
    recorder.strategy = strategy
    strategy.start(
        grid,
        to_record({k: initial[k] for k in keys}),
        num_rounds=config.rounds,
        timeout=config.round_timeout,
        train_config=ConfigRecord(train_config),
        evaluate_fn=recorder.after_round,
    )
    return recorder.finish()
