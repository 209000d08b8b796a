"""The fleet's Flower ClientApp: each node trains the global adapter on its own data, torch-free.

A SuperNode names its bundle and data in its node config:

    flower-supernode ... --node-config 'bundle="/data/bundle" data="/data/mine.jsonl"'

Each train message carries the global arrays (`ArrayRecord`, PEFT keys) and the round's
config (the strategy, local steps, learning rate, ..., and the server's base-model hash).
A node whose bundle was built from another base model refuses with a one-line error reply;
so does a node whose training fails on bad input. Under differential privacy the server's
config carries a clipping norm and Flower's `fixedclipping_mod` clips the update.
"""

from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from edgetune.common.errors import EdgetuneError
from edgetune.fed.local import check_base, train_round
from edgetune.fed.payload import ARRAYS, BASE_SHA, CONFIG, METRICS, from_record, record_bytes, to_record

KEY_CLIPPING_NORM = "clipping_norm"  # what Flower's DP wrapper adds to the train config
REFUSED = 1001  # error code of a node that refuses a round (bad bundle or data)


def clip_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's `fixedclipping_mod` when the server asks for clipping (DP runs), else nothing."""
    config = msg.content.config_records.get(CONFIG)
    if config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clip_when_asked])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round on this node: train from the global arrays, reply with the update and its metrics."""
    try:
        bundle, data = node_paths(context.node_config)
        config: ConfigRecord = msg.content[CONFIG]
        manifest = check_base(bundle, str(config[BASE_SHA]))
        settings = {k: config[k] for k in ("local_steps", "lr", "batch_size", "seq_len")}
        settings["seed"] = int(config["seed"]) + 1000 * int(config["server-round"])
        result = train_round(
            bundle, data, from_record(msg.content[ARRAYS]), str(config["strategy"]), settings, manifest
        )
    except EdgetuneError as e:
        return Message(Error(code=REFUSED, reason=f"node {context.node_id}: {e}"), reply_to=msg)
    arrays = to_record(result.arrays)
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "uniform-weight": 1,  # DP's accountant needs equal client weights
            "train-loss": result.train_loss,
            "train-seconds": result.train_s,
            "upload-bytes": record_bytes(arrays),
        }
    )
    return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)


def node_paths(node_config: dict) -> tuple[Path, Path]:
    """The node's bundle and data paths from its node config, refused by name when missing."""
    missing = [k for k in ("bundle", "data") if not node_config.get(k)]
    if missing:
        raise EdgetuneError(
            f'node config lacks {missing[0]} (flower-supernode --node-config \'bundle="..." data="..."\')'
        )
    return Path(str(node_config["bundle"])), Path(str(node_config["data"]))
