"""The one place SmartFed uses Flower internals: non-public modules and private attributes.

Everything else in :mod:`smartfed.federation` uses Flower's public API only (``flwr.app``,
``flwr.clientapp``, ``flwr.serverapp``, ``flwr.simulation``; for SecAgg+, the public legacy
API: ``flwr.server``, ``flwr.server.strategy``, ``flwr.server.workflow``, ``flwr.common``,
``flwr.client.mod``). The in-process Grid
(:mod:`smartfed.federation.inprocess`) needs what a SuperLink does and Flower does not export:

- a ``Run`` record for the Grid (``flwr.supercore.run``);
- the sender identity the ``Message`` constructor reads (``flwr.supercore.task_identity``,
  ``flwr.common.constant.SUPERLINK_NODE_ID``);
- message ids, which the SuperLink assigns (``Metadata._message_id``, no public setter);
- Flower's wire serialisation, deflate and inflate (``flwr.supercore.inflatable``);
- the error code of a ClientApp that raised (``flwr.common.constant.ErrorCode``);
- for secure aggregation (:mod:`.secure_aggregation`), the legacy layout that Flower's SecAgg+
  workflow and mod exchange: the workflow's round records (``flwr.server.workflow.constant``),
  a node's ``ClientProxy`` (``flwr.server.compat.grid_client_proxy``), the FitIns/FitRes
  records of a message (``flwr.compat.common.recorddict_compat``) and the key that marks a
  SecAgg+ message (``flwr.common.secure_aggregation.secaggplus_constants``).

These were checked against the Flower versions in :data:`TESTED_FLOWER`; on any other version
:func:`check_flower_version` stops with a one-line :class:`~smartfed.errors.ConfigError` before
anything is sent. The internal modules are imported on use, after that check, so another
Flower version fails with that line rather than with an ImportError on ``import smartfed``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import flwr
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict

from smartfed.errors import ConfigError

if TYPE_CHECKING:
    from flwr.server import LegacyContext
    from flwr.server.client_proxy import ClientProxy  # the legacy node handle
    from flwr.server.strategy import Strategy
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run  # the Grid interface's run type

#: Flower release series (major.minor) whose internals this module was tested with.
TESTED_FLOWER = ("1.42",)


def check_flower_version(version: str | None = None) -> None:
    """Raise ConfigError unless ``version`` (default: the installed Flower's) was tested."""
    version = flwr.__version__ if version is None else version
    match = re.match(r"(\d+)\.(\d+)(\.|$)", version)
    if match is None or f"{match[1]}.{match[2]}" not in TESTED_FLOWER:
        tested = ", ".join(f"{series}.x" for series in TESTED_FLOWER)
        raise ConfigError(
            f"Flower {version} is untested: the in-process engine relies on Flower internals "
            f"tested with flwr {tested} only; install that (pip install 'flwr>=1.42,<1.43')"
        )


def new_run(run_id: int, run_config: dict[str, Any]) -> Run:
    """An empty ``Run`` carrying ``run_config`` as its override config."""
    from flwr.supercore import run as flower_run

    run = flower_run.Run.create_empty(run_id)
    run.override_config = dict(run_config)
    return run


def act_as_superlink(run_id: int) -> None:
    """Messages created from now on in this process are sent by the SuperLink in ``run_id``.

    Flower's ``Message`` constructor reads the sender's identity from this process-wide state.
    """
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id = 1, run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def set_message_id(message: Message, message_id: str) -> None:
    """Assign a message's id, as the SuperLink does (``Metadata.message_id`` is read-only)."""
    message.metadata.__dict__["_message_id"] = message_id


def wire_copy(message: Message) -> Message:
    """Serialise and deserialise ``message`` as Flower's transport does: a private copy."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    copy = inflate_object_from_contents(message.object_id, contents)
    # The message id is transport metadata, assigned by the SuperLink, not part of the payload.
    set_message_id(copy, message.metadata.message_id)
    return copy


def client_app_error(reason: str) -> Error:
    """The error a SuperNode replies with when its ClientApp raised."""
    from flwr.common.constant import ErrorCode

    return Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)


# ---------------------------------------------------------------- SecAgg+ (legacy layout)
def is_secagg_message(message: Message) -> bool:
    """Whether ``message`` is a step of Flower's SecAgg+ protocol (it carries its configs)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return message.has_content() and RECORD_KEY_CONFIGS in message.content


def legacy_round_context(
    run_id: int, server_round: int, arrays: ArrayRecord, strategy: Strategy
) -> LegacyContext:
    """What Flower's ``DefaultWorkflow`` hands its fit workflow for one round: the round number
    and the global state in the workflow's records, and the legacy ``strategy``."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    base = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, config=ServerConfig(num_rounds=server_round), strategy=strategy)
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    context.state[MAIN_PARAMS_RECORD] = arrays
    return context


def node_proxy(node_id: int, grid: Grid) -> ClientProxy:
    """The legacy handle of a node (the SecAgg+ workflow reads only its ``node_id``)."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    return GridClientProxy(node_id, grid, grid.run.run_id)


def read_fit_instructions(content: RecordDict) -> tuple[list[np.ndarray], ConfigRecord]:
    """The arrays (in the order sent) and config of a legacy FitIns message."""
    from flwr.common import bytes_to_ndarray

    record = content["fitins.parameters"]
    keys = sorted(record.keys(), key=int)  # the legacy layout names arrays "0", "1", ...
    return [bytes_to_ndarray(record[key].data) for key in keys], content["fitins.config"]


def fit_result_content(arrays: Sequence[np.ndarray], num_examples: int) -> RecordDict:
    """A legacy FitRes message's records: ``arrays`` in order, weighted by ``num_examples``."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    result = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters(list(arrays)),
        num_examples=num_examples,
        metrics={},
    )
    return fitres_to_recorddict(result, keep_input=False)
