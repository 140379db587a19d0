"""Data layer: dataset registry and loaders, chat-template encoding, batching, partitioning."""

from smartfed.data.examples import Example
from smartfed.data.formatting import (
    IGNORE_INDEX,
    BatchStream,
    EncodedExamples,
    collate,
    encode_example,
    encode_examples,
)
from smartfed.data.hub import HUB_MIRROR_ENV, HubSource, HubUnavailable
from smartfed.data.partition import (
    PARTITIONERS,
    partition_examples,
    partition_stats,
    register_partitioner,
)
from smartfed.data.registry import (
    BUNDLED_DIR,
    DATA_DIR_ENV,
    DATASETS,
    DatasetSpec,
    ResolvedFile,
    available_datasets,
    get_dataset,
    load_examples,
    load_jsonl,
    register_dataset,
    resolve_split_file,
)
from smartfed.data.sets import gsm8k as _gsm8k  # noqa: F401  (registers the built-in datasets)

__all__ = [
    "BUNDLED_DIR",
    "DATASETS",
    "DATA_DIR_ENV",
    "HUB_MIRROR_ENV",
    "IGNORE_INDEX",
    "PARTITIONERS",
    "BatchStream",
    "DatasetSpec",
    "EncodedExamples",
    "Example",
    "HubSource",
    "HubUnavailable",
    "ResolvedFile",
    "available_datasets",
    "collate",
    "encode_example",
    "encode_examples",
    "get_dataset",
    "load_examples",
    "load_jsonl",
    "partition_examples",
    "partition_stats",
    "register_dataset",
    "register_partitioner",
    "resolve_split_file",
]
