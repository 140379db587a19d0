"""SmartFed's Flower ClientApp: local router training on the node's partition."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from smartfed.federation.core import client_seed, train_local
from smartfed.federation.runtime import get_runtime
from smartfed.federation.settings import from_run_config

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = from_run_config(context.run_config, context.node_config)
    runtime = get_runtime(config)
    partition_id = int(context.node_config["partition-id"])
    round_config = msg.content["config"]
    server_round = int(round_config["server-round"])
    stream = runtime.client_batches(partition_id, server_round)
    update = train_local(
        runtime.more,
        (stream.next_batch() for _ in range(config.local_steps)),
        router_state=msg.content["arrays"].to_torch_state_dict(),
        quotas=list(round_config["quotas"]),
        local_steps=config.local_steps,
        learning_rate=config.learning_rate,
        num_examples=len(runtime.encoded_partition(partition_id)),
        seed=client_seed(config.seed, server_round, partition_id),
    )
    metrics = MetricRecord(
        {
            "num-examples": update.num_examples,
            "train-loss": update.train_loss,
            "tokens": update.tokens,
            "step-time-s": update.step_time_s,
            "importance": [float(v) for v in update.importance],
        }
    )
    arrays = ArrayRecord(update.router_state)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
