"""`edgetune fed simulate`: a fleet on one machine, each client in turn, through Flower's Message API.

The ServerApp's `run_fleet` and the ClientApp run unchanged; `SequentialGrid` stands in
for the SuperLink: it hands each message to its node's ClientApp (mods included) in this
process, one client after the other, and returns the replies. Flower's own simulation
engine needs Ray (the `flwr[simulation]` extra) and runs clients in parallel; on a
2-core device-class machine clients in turn measure each client's training time cleanly
and keep one ONNX Runtime session alive at a time. A real fleet runs on the Deployment
Engine (README, "Fleet tuning"). SecAgg+ runs (`secagg`) go through the same grid to
`fed.secagg_client`'s ClientApp.
"""

from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from edgetune.common.errors import DataError
from edgetune.fed.client_app import app as client_app
from edgetune.fed.config import FleetConfig
from edgetune.fed.secagg_client import app as secagg_client_app
from edgetune.fed.server_app import run_fleet
from edgetune.tasks.dates import HELDOUT_FILE

CLIENT_CRASHED = 1002
RUN_ID = 1


class SequentialGrid(Grid):
    """A Grid whose nodes are ClientApp contexts in this process, served one message at a time by `app`."""

    def __init__(self, contexts: dict[int, Context], app: ClientApp = client_app):
        self.contexts = contexts
        self.app = app
        self.replies: dict[str, Message] = {}
        self._run = Run.create_empty(RUN_ID)  # Flower's legacy workflows read the run id

    def set_run(self, run) -> None:
        """Keep the run (every context already names it)."""
        self._run = run

    @property
    def run(self):
        """The run set with `set_run`."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None):
        """A message to one node (Flower's deprecated helper, kept for the interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The simulated nodes."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message's ClientApp now, in order; keep the replies for `pull_messages`."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex  # as Flower's in-memory grid does
            self.replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to `message_ids`."""
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Every reply: the clients ran in turn inside `push_messages`."""
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        """The node's ClientApp reply; an exception becomes an error reply, as a SuperNode sends it.

        Both travel as Flower's protobuf, as over a network: the server may send one content
        object to every node (SecAgg+'s stages do), which a node's mods must not change for the others.
        """
        message = _transmitted(message)
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.app(message, context)
        except Exception as e:
            reply = Message(Error(code=CLIENT_CRASHED, reason=f"{type(e).__name__}: {e}"), reply_to=message)
        return _transmitted(reply)


def _transmitted(message: Message) -> Message:
    """The message as the other end receives it (serialized and parsed)."""
    return message_from_proto(message_to_proto(message))


def client_parts(data_dir: Path, clients: int) -> list[Path]:
    """The first `clients` JSONL files of `data_dir` by name (heldout.jsonl aside): one per client."""
    parts = sorted(p for p in Path(data_dir).glob("*.jsonl") if p.name != HELDOUT_FILE)
    if len(parts) < clients:
        raise DataError(f"{data_dir}: {len(parts)} JSONL files for {clients} clients (one file per client)")
    return parts[:clients]


def simulate(config: FleetConfig, data_dir: Path) -> dict:
    """Run the fleet of `config.clients` clients on the JSONL parts of `data_dir`; return the summary."""
    run_config = config.to_run_config()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID  # as a ServerApp's
    contexts = {
        node: Context(RUN_ID, node, {"bundle": str(config.bundle), "data": str(part)}, RecordDict(), run_config)
        for node, part in enumerate(client_parts(data_dir, config.clients), start=1)
    }
    return run_fleet(SequentialGrid(contexts, secagg_client_app if config.secagg else client_app), config)
