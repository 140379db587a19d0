"""`smartfed lm-eval`: lm-evaluation-harness on a run's model, offline, on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.cli.main import main
from smartfed.federation.runner import run_federated

TASK = "smartfed_tiny_mc"
DOCS = [
    {"question": "2+3=", "choices": ["5", "6", "7"], "answer": 0},
    {"question": "1+1=", "choices": ["3", "2", "9"], "answer": 1},
    {"question": "4+4=", "choices": ["1", "0", "8"], "answer": 2},
    {"question": "3+3=", "choices": ["6", "4", "5"], "answer": 0},
    {"question": "0+2=", "choices": ["7", "2", "1"], "answer": 1},
    {"question": "5+1=", "choices": ["6", "8", "3"], "answer": 0},
]


@pytest.fixture(scope="module", autouse=True)
def _builtin_tasks_indexed_once():
    """Every TaskManager lm-eval makes (each `smartfed lm-eval` here makes one) reads all of
    lm-eval's ~15k built-in task YAML files again, about 5 s of CPU each time. The installed
    package does not change between this module's tests, so its folder is read once and the
    index reused; an --include_path folder (which the tests write to) is still read every time.
    """
    try:
        from lm_eval.tasks import _index, manager
    except ImportError:  # no lm-eval: the tests say so themselves
        yield
        return
    builtin = Path(manager.__file__).parent
    real = _index.TaskIndex.build
    cached: dict = {}

    def build(paths, **kwargs):
        paths = list(paths)
        if kwargs or not paths or paths[0] != builtin:
            return real(paths, **kwargs)
        if "index" not in cached:
            cached["index"] = real([builtin])
        return {**cached["index"], **(real(paths[1:]) if paths[1:] else {})}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_index.TaskIndex, "build", staticmethod(build))
        yield


@pytest.fixture
def local_task(tmp_path) -> Path:
    """A multiple-choice (log-likelihood) lm-eval task on a local JSONL file."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


@pytest.fixture
def finished_smartfed_run(tiny_run_config):
    config = tiny_run_config(num_rounds=1)
    run_federated(config)
    return config


def _expected_logliks(config, chat: bool) -> list[list[float]]:
    """Each choice's log-likelihood after its question, from SmartFed's own loss path
    (`answer_token_loss` on prompt-masked rows): the chat template's rendering of the question
    (or the bare question), then the choice's tokens, which alone are scored. As lm-eval does,
    the context's trailing whitespace (the chat template's newline after the assistant header)
    moves to the front of the scored continuation."""
    import smartfed
    from smartfed.data.formatting import IGNORE_INDEX, collate
    from smartfed.engine.evaluation import answer_token_loss
    from smartfed.evaluation.generation import render_prompt

    model, tokenizer = smartfed.load_run(config.output_dir, device="cpu")
    out = []
    for doc in DOCS:
        context = render_prompt(tokenizer, doc["question"]) if chat else doc["question"]
        moved = context[len(context.rstrip()) :]
        ctx = tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"]
        rows = []
        for choice in doc["choices"]:
            cont = tokenizer(moved + choice, add_special_tokens=False)["input_ids"]
            rows.append({"input_ids": ctx + cont, "labels": [IGNORE_INDEX] * len(ctx) + cont})
        loss = answer_token_loss(model, collate(rows, tokenizer.pad_token_id))
        out.append([-float(v) for v in loss.row_sums])
    return out


@pytest.mark.parametrize("chat", [True, False])
def test_lm_eval_scores_a_local_task_offline_as_smartfeds_loss_says(
    chat, finished_smartfed_run, local_task, capsys, monkeypatch
):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = finished_smartfed_run
    argv = ["lm-eval", "--run", config.output_dir, "--tasks", TASK, "--include_path",
            str(local_task), "--device", "cpu", "--log_samples"]  # fmt: skip
    assert main(argv if chat else [*argv, "--no_chat_template"]) == 0
    printed = capsys.readouterr().out.splitlines()

    expected = _expected_logliks(config, chat)
    accuracy = sum(
        max(range(len(ll)), key=ll.__getitem__) == doc["answer"]
        for ll, doc in zip(expected, DOCS, strict=True)
    ) / len(DOCS)
    written = json.loads((Path(config.output_dir) / "lm_eval" / f"{TASK}.json").read_text())
    assert written["smartfed"]["chat_template"] is chat
    assert written["smartfed"]["run"]["method"] == "smartfed"
    assert written["results"][TASK]["acc,none"] == pytest.approx(accuracy, abs=1e-12)
    samples = sorted(written["samples"][TASK], key=lambda s: s["doc_id"])
    for sample, logliks in zip(samples, expected, strict=True):
        got = [resp[0] for resp in sample["filtered_resps"]]
        assert got == pytest.approx(logliks, abs=1e-4)
    line = json.loads((Path(config.output_dir) / "lm_eval.jsonl").read_text().splitlines()[-1])
    assert line["benchmark"] == f"lm_eval:{TASK}" and line["metric"] == "acc"
    assert line["value"] == pytest.approx(accuracy) and line["n"] == len(DOCS)
    assert printed[0].startswith(f"lm_eval:{TASK}: acc {accuracy:.4f}")
    assert f"chat template {'on' if chat else 'off'}" in printed[0]


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("smartfed: error: "), err
    return lines[0]


def test_lm_eval_refusals_are_one_line(finished_smartfed_run, local_task, capsys, monkeypatch):
    run = finished_smartfed_run.output_dir
    code = main(["lm-eval", "--run", run, "--tasks", "no_such_task_xyz", "--include_path",
                 str(local_task)])  # fmt: skip
    assert "unknown lm-eval task(s) no_such_task_xyz" in _one_line_error(
        code, capsys.readouterr().err
    )
    # A code-execution task without the explicit opt-in.
    unsafe = local_task / "unsafe.yaml"
    unsafe.write_text(
        (local_task / f"{TASK}.yaml").read_text().replace(TASK, "smartfed_unsafe")
        + "unsafe_code: true\n"
    )
    code = main(["lm-eval", "--run", run, "--tasks", "smartfed_unsafe", "--include_path",
                 str(local_task), "--device", "cpu"])  # fmt: skip
    line = _one_line_error(code, capsys.readouterr().err)
    assert "unsafe" in line and "--confirm_run_unsafe_code" in line
    # lm-eval missing: refused in one line, with the install command.
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    code = main(["lm-eval", "--run", run, "--tasks", TASK])
    assert "pip install 'smartfed[lm_eval]'" in _one_line_error(code, capsys.readouterr().err)
