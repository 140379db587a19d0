"""SmartFed's Flower ClientApp: local training of the run's method on the node's partition.

What is trained and sent is the method's business (:mod:`smartfed.methods`): routers for
SmartFed and MoLE, A and B for FedIT, B for FFA-LoRA, A for FedSA-LoRA. A method's client-local
state (FedSA-LoRA's B) lives in the node's ``context.state`` between rounds, as Flower intends.
Received state is decoded into the float32 parameters; the update is sent in the run's
``wire_dtype`` (:mod:`.wire`).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from smartfed.assembly.runtime import get_runtime
from smartfed.engine.evaluation import evaluate_loss
from smartfed.engine.training import client_seed, train_local
from smartfed.federation.secure_aggregation import secure_aggregation_mod
from smartfed.federation.settings import PARTITION_ID, from_run_config
from smartfed.federation.wire import from_wire, to_wire
from smartfed.telemetry.progress import client_progress

app = ClientApp()
LOCAL_STATE_KEY = "smartfed-local-state"


# Plain rounds pass through the mod; SecAgg+ rounds (--secure_aggregation) go through Flower's.
@app.train(mods=[secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    config = from_run_config(context.run_config, context.node_config)
    runtime = get_runtime(config)
    method = runtime.method
    partition_id = int(context.node_config[PARTITION_ID])
    round_config = msg.content["config"]
    server_round = int(round_config["server-round"])
    stream = runtime.client_batches(partition_id, server_round)
    kept = context.state.get(LOCAL_STATE_KEY)
    # The round's bar when the in-process grid runs this client, else a bar of its own; the
    # node id is the client's name in metrics.jsonl (sampled_clients) and the server's log.
    label = f"round {server_round}/{config.num_rounds}"
    with client_progress(context.node_id, config.local_steps, label) as progress:
        update = train_local(
            method,
            (stream.next_batch() for _ in range(config.local_steps)),
            global_state=from_wire(msg.content["arrays"]),
            local_state=kept.to_torch_state_dict() if kept else runtime.initial_local_state,
            round_config=dict(round_config),
            local_steps=config.local_steps,
            learning_rate=config.settings.learning_rate,
            num_examples=len(runtime.encoded_partition(partition_id)),
            seed=client_seed(config.seed, server_round, partition_id),
            on_step=progress.step,
        )
    if update.local_state:
        context.state[LOCAL_STATE_KEY] = ArrayRecord(update.local_state)
    metrics = {
        "num-examples": update.num_examples,
        "train-loss": update.train_loss,
        "tokens": update.tokens,
        "step-time-s": update.step_time_s,
        **update.metrics,
    }
    arrays = to_wire(update.global_state, config.wire_dtype)
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalised evaluation (FedSA-LoRA): the new global state with this client's own local
    state, on the held-out set. Only sent to methods that evaluate on clients."""
    config = from_run_config(context.run_config, context.node_config)
    runtime = get_runtime(config)
    method = runtime.method
    kept = context.state.get(LOCAL_STATE_KEY)
    method.load_global_state(from_wire(msg.content["arrays"]))
    method.load_local_state(kept.to_torch_state_dict() if kept else runtime.initial_local_state)
    method.apply_round_config(dict(msg.content["config"]))
    result = evaluate_loss(method.model, runtime.eval_batches)
    metrics = {
        "eval-loss-sum": result.get("eval_loss_sum", 0.0),
        "eval-tokens": result.get("eval_tokens", 0),
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id, which the server samples and aggregates by: Flower's
    simulation and SuperLink give nodes random ids. Builds no runtime."""
    partition_id = int(context.node_config[PARTITION_ID])
    return Message(
        RecordDict({"metrics": MetricRecord({PARTITION_ID: partition_id})}), reply_to=msg
    )
