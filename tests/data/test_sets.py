"""The built-in benchmark/training datasets: counts, meta, error messages, bundled subsets."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from smartfed.data import (
    DATA_DIR_ENV,
    DATASETS,
    available_datasets,
    load_examples,
    registry,
    resolve_split_file,
)
from smartfed.data.arith import is_close
from smartfed.data.sets.gsm8k_pal import PAL_INSTRUCTION, fenced, pal_prompt
from smartfed.data.sets.math23k import parse_answer as parse_math23k_answer
from smartfed.data.sets.mgsm import LANGUAGES
from smartfed.data.sets.mgsm import parse_answer as parse_mgsm_answer
from smartfed.data.sets.zh_code import is_code_request
from smartfed.errors import ConfigError

EXPECTED_COUNTS = {
    **{(f"mgsm_{lang}", "test"): 250 for lang in LANGUAGES},
    ("gsm_hard", "test"): 1319,
    ("gsm_hard_pal", "test"): 1319,
    ("humaneval", "test"): 164,
    ("mbpp", "test"): 500,
    ("mbpp", "train"): 464,
    ("mbpp", "prompt"): 10,
    ("math23k", "train"): 2316,
    ("math23k", "test"): 2316,
    ("zh_code", "train"): 171,
    ("zh_code", "test"): 20,
}
FINAL_ZH = re.compile(r"答案是 (-?\d+(?:\.\d+)?)。")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _one_line_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_all_datasets_are_registered() -> None:
    names = set(available_datasets())
    expected = {f"mgsm_{lang}" for lang in LANGUAGES} | {
        "gsm8k",
        "gsm8k_pal",
        "gsm_hard",
        "gsm_hard_pal",
        "math23k",
        "humaneval",
        "mbpp",
        "doit",
        "zh_code",
        "zh_instruct",
        "code_instruct",
        "metamathqa",
        "magicoder_oss_instruct",
        "okapi_zh",
    }
    assert expected <= names
    assert len(LANGUAGES) == 11
    assert DATASETS["doit"].hub_id == "ChiyuSONG/dynamics-of-instruction-tuning"
    hub_ids = {name: spec.hub_id for name, spec in DATASETS.items()}
    assert hub_ids["metamathqa"] == "meta-math/MetaMathQA"
    assert hub_ids["magicoder_oss_instruct"] == "ise-uiuc/Magicoder-OSS-Instruct-75K"
    assert hub_ids["gsm_hard"] == "reasoning-machines/gsm-hard"
    assert hub_ids["humaneval"] == "openai/openai_humaneval"
    # Offline stand-ins and data published nowhere on the hub have no hub copy.
    assert all(hub_ids[n] is None for n in ("math23k", "zh_instruct", "zh_code", "okapi_zh"))


# --------------------------------------------------------------------------------------------
# Full data (the needs_data fixture: $SMARTFED_DATA_DIR or ../shared/data)


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED_COUNTS))
def test_counts_and_meta_from_shared_data(name: str, split: str, needs_data: Path) -> None:
    examples = load_examples(name, split, data_dir=needs_data)
    assert len(examples) == EXPECTED_COUNTS[(name, split)]
    documented = set(DATASETS[name].meta_fields)
    for example in examples:
        assert set(example.meta) == documented
        assert example.prompt.strip() and example.response.strip()
    assert resolve_split_file(name, split, data_dir=needs_data).origin == "data_dir"


def test_mgsm_answer_lines(needs_data: Path) -> None:
    rows = list(
        csv.reader(
            (needs_data / "mgsm" / "mgsm_zh.tsv").open(encoding="utf-8", newline=""),
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
        )
    )
    zh = load_examples("mgsm_zh", "test", data_dir=needs_data)
    assert zh[0].prompt == rows[0][0] and zh[0].response == "答案是 18。"
    assert zh[0].meta == {"answer": 18, "lang": "zh", "source": "mgsm"}
    # "2,125" in the file is the integer 2125.
    assert any(e.meta["answer"] == 2125 for e in zh)
    en = load_examples("mgsm_en", "test", data_dir=needs_data)
    de = load_examples("mgsm_de", "test", data_dir=needs_data)
    assert en[0].response == de[0].response == "The answer is 18."
    assert de[0].meta["lang"] == "de"
    assert [e.meta["answer"] for e in en] == [e.meta["answer"] for e in de]


def test_gsm_hard_humaneval_mbpp_fields(needs_data: Path) -> None:
    hard = load_examples("gsm_hard", "test", data_dir=needs_data)
    assert all(isinstance(e.meta["answer"], float) for e in hard)
    assert hard[0].response.startswith("def solution():")

    human = load_examples("humaneval", "test", data_dir=needs_data)
    first = human[0]
    assert first.meta["task_id"] == "HumanEval/0"
    assert first.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first.meta["test"]
    assert first.meta["code_prompt"] == first.prompt
    compile(first.prompt + first.response, "humaneval", "exec")  # a complete function

    test = load_examples("mbpp", "test", data_dir=needs_data)
    train = load_examples("mbpp", "train", data_dir=needs_data)
    assert [e.meta["task_id"] for e in test] == list(range(11, 511))
    assert [e.meta["task_id"] for e in train] == list(range(511, 975))
    for example in test + train:
        tests = example.meta["test_list"]
        assert isinstance(tests, list) and len(tests) == 3
        assert example.prompt.endswith(f"\nYour code should pass this test:\n{tests[0]}")
        assert "\r" not in example.response


@pytest.mark.parametrize(("split", "file"), [("train", "validset.json"), ("test", "testset.json")])
def test_math23k_targets_end_with_the_answer(split: str, file: str, needs_data: Path) -> None:
    records = {
        r["id"]: r for r in json.loads((needs_data / "math23k" / file).read_text(encoding="utf-8"))
    }
    examples = load_examples("math23k", split, data_dir=needs_data)
    for example in examples:
        last = example.response.splitlines()[-1]
        match = FINAL_ZH.fullmatch(last)
        assert match, last
        number = float(match.group(1))
        assert number == example.meta["answer"]
        gold = parse_math23k_answer(records[example.meta["id"]]["ans"])
        assert is_close(number, gold, rel_tol=1e-3, abs_tol=1e-4)
    assert "10431" not in {e.meta["id"] for e in examples}  # "x=80千米/小时" is skipped


# --------------------------------------------------------------------------------------------
# Bundled subsets (no data dir, no environment variable)


@pytest.mark.parametrize(
    ("name", "split", "count", "relative"),
    [
        ("math23k", "train", 600, "math23k/validset.json"),
        ("math23k", "test", 150, "math23k/testset.json"),
        ("mgsm_zh", "test", 250, "mgsm/mgsm_zh.tsv"),
        ("mgsm_en", "test", 250, "mgsm/mgsm_en.tsv"),
        ("gsm_hard", "test", 50, "gsm_hard/gsmhardv2.jsonl"),
        ("humaneval", "test", 40, "humaneval/HumanEval.jsonl.gz"),
        ("mbpp", "test", 50, "mbpp/mbpp.jsonl"),
        ("mbpp", "prompt", 10, "mbpp/mbpp.jsonl"),
    ],
)
def test_bundled_subsets_load_without_a_data_dir(
    name: str, split: str, count: int, relative: str
) -> None:
    resolved = resolve_split_file(name, split)
    assert resolved.origin == "bundled"
    assert resolved.path == registry.BUNDLED_DIR / relative
    assert (resolved.path.parent / "LICENSE").is_file()
    assert len(load_examples(name, split)) == count


def test_bundled_files_are_small() -> None:
    added = [registry.BUNDLED_DIR / d for d in ("math23k", "mgsm")]
    size = sum(p.stat().st_size for d in added for p in d.iterdir())
    assert size < 600_000
    evaluation = [registry.BUNDLED_DIR / d for d in ("gsm_hard", "humaneval", "mbpp")]
    assert sum(p.stat().st_size for d in evaluation for p in d.iterdir()) < 150_000


def test_bundled_evaluation_subsets_are_documented_with_their_licences() -> None:
    readme = (registry.BUNDLED_DIR / "README.md").read_text(encoding="utf-8")
    licences = {"gsm_hard": "Apache License", "humaneval": "MIT License", "mbpp": "Apache License"}
    for name, licence in licences.items():
        assert f"## {name}/" in readme
        assert licence in (registry.BUNDLED_DIR / name / "LICENSE").read_text(encoding="utf-8")
    # The bundled MBPP file holds only ids 1-60: no train split, so it is not used for one.
    assert [e.meta["task_id"] for e in load_examples("mbpp", "test", limit=50)] == list(
        range(11, 61)
    )


def test_bundled_files_are_unchanged_copies(needs_data: Path) -> None:
    bundled = registry.BUNDLED_DIR
    for lang in ("zh", "en"):
        name = f"mgsm_{lang}.tsv"
        assert (bundled / "mgsm" / name).read_bytes() == (needs_data / "mgsm" / name).read_bytes()
    for name, count in (("validset.json", 600), ("testset.json", 150)):
        full = json.loads((needs_data / "math23k" / name).read_text(encoding="utf-8"))
        subset = json.loads((bundled / "math23k" / name).read_text(encoding="utf-8"))
        assert subset == full[:count]
    # Evaluation subsets: the first lines of each file, byte for byte (HumanEval decompressed).
    for relative, lines in (("gsm_hard/gsmhardv2.jsonl", 50), ("mbpp/mbpp.jsonl", 60)):
        head = (bundled / relative).read_bytes()
        assert (needs_data / relative).read_bytes().startswith(head)
        assert head.count(b"\n") == lines and head.endswith(b"\n")
    human = gzip.decompress((bundled / "humaneval" / "HumanEval.jsonl.gz").read_bytes())
    full_human = gzip.decompress((needs_data / "humaneval" / "HumanEval.jsonl.gz").read_bytes())
    assert full_human.startswith(human) and human.count(b"\n") == 40
    for name, licence in (("gsm_hard", "LICENSE-pal.txt"), ("humaneval", "LICENSE-human-eval.txt"),
                          ("mbpp", "LICENSE-google-research-Apache-2.0.txt")):  # fmt: skip
        assert (bundled / name / "LICENSE").read_bytes() == (
            needs_data / name / licence
        ).read_bytes()


def test_languages_not_bundled_name_the_data_dir() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_examples("mgsm_de", "test")
    assert "--data_dir" in _one_line_error(excinfo)


# --------------------------------------------------------------------------------------------
# Hand-written files: formats and one-line errors


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_mgsm_parses_quotes_and_separators(tmp_path: Path) -> None:
    _write(tmp_path, "mgsm/mgsm_fr.tsv", 'Il dit "bonjour" ?\t1,080\nCombien ?\t-3\n\n')
    examples = load_examples("mgsm_fr", "test", data_dir=tmp_path)
    assert [e.meta["answer"] for e in examples] == [1080, -3]
    assert examples[0].prompt == 'Il dit "bonjour" ?'
    assert examples[1].response == "The answer is -3."


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("Q1\t1\nQ2\t2\textra\n", "mgsm_zh.tsv:2: expected 2 tab-separated columns"),
        ("Q1\t1\nQ2 without answer\n", "mgsm_zh.tsv:2: expected 2 tab-separated columns"),
        ("Q1\t1\nQ2\tabc\n", "mgsm_zh.tsv:2: answer 'abc' is not a number"),
        ("Q1\t2,5\n", "mgsm_zh.tsv:1: answer '2,5' is not a number"),
    ],
)
def test_malformed_tsv_row_names_file_and_line(tmp_path: Path, body: str, fragment: str) -> None:
    _write(tmp_path, "mgsm/mgsm_zh.tsv", body)
    with pytest.raises(ConfigError) as excinfo:
        load_examples("mgsm_zh", "test", data_dir=tmp_path)
    assert fragment in _one_line_error(excinfo)


def test_mgsm_answer_parser() -> None:
    assert parse_mgsm_answer("114,200") == 114200
    assert parse_mgsm_answer("2.50") == 2.5
    assert parse_mgsm_answer("7.0") == 7
    for bad in ("", "nan", "1e5", "12,34", "1.2.3"):
        with pytest.raises(ValueError):
            parse_mgsm_answer(bad)


@pytest.mark.parametrize(
    ("name", "relative", "record", "field"),
    [
        ("gsm_hard", "gsm_hard/gsmhardv2.jsonl", {"input": "Q", "target": 1.0}, "code"),
        (
            "mbpp",
            "mbpp/mbpp.jsonl",
            {"task_id": 11, "text": "T", "test_list": ["assert 1"], "test_setup_code": ""},
            "code",
        ),
    ],
)
def test_missing_field_in_jsonl(
    tmp_path: Path, name: str, relative: str, record: dict, field: str
) -> None:
    _write(tmp_path, relative, json.dumps(record) + "\n")
    with pytest.raises(ConfigError) as excinfo:
        load_examples(name, "test", data_dir=tmp_path)
    message = _one_line_error(excinfo)
    assert f":1: missing field {field!r}" in message


def test_humaneval_reads_gzip_and_reports_missing_field(tmp_path: Path) -> None:
    record = {
        "task_id": "HumanEval/0",
        "prompt": "def f(x):\n",
        "entry_point": "f",
        "canonical_solution": "    return x\n",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
    }
    path = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    [example] = load_examples("humaneval", "test", data_dir=tmp_path)
    assert example.prompt + example.response == "def f(x):\n    return x\n"
    assert example.meta["entry_point"] == "f"

    del record["test"]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    with pytest.raises(ConfigError) as excinfo:
        load_examples("humaneval", "test", data_dir=tmp_path)
    assert "HumanEval.jsonl.gz:1: missing field 'test'" in _one_line_error(excinfo)

    path.write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="gzip"):
        load_examples("humaneval", "test", data_dir=tmp_path)


def _math23k_file(root: Path, records: list[dict]) -> None:
    _write(root, "math23k/testset.json", json.dumps(records, ensure_ascii=False))


def test_math23k_target_and_answer_forms(tmp_path: Path) -> None:
    records = [
        {"id": "1", "original_text": "问题一", "equation": "x=(11-1)*2", "ans": "20"},
        {"id": "2", "original_text": "问题二", "equation": "x=1-(1/3)-(1/5)", "ans": "((7)/(15))"},
        {"id": "3", "original_text": "问题三", "equation": "x=[1-50%]/2", "ans": "25%"},
        {"id": "4", "original_text": "问题四", "equation": "x=19+3/4", "ans": "19((3)/(4))"},
        {"id": "5", "original_text": "问题五", "equation": "x=3.14*2^2", "ans": "12.56"},
    ]
    _math23k_file(tmp_path, records)
    examples = load_examples("math23k", "test", data_dir=tmp_path)
    assert examples[0].response == "列式：x=(11-1)*2\n计算得 x=20。\n答案是 20。"
    assert [e.response.splitlines()[-1] for e in examples] == [
        "答案是 20。",
        "答案是 0.4667。",
        "答案是 0.25。",
        "答案是 19.75。",
        "答案是 12.56。",
    ]
    assert [e.meta["answer"] for e in examples] == [20, 0.4667, 0.25, 19.75, 12.56]
    assert examples[0].meta == {"answer": 20, "id": "1", "source": "math23k"}


def test_math23k_skips_records_that_do_not_reproduce_the_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [
        {"id": "1", "original_text": "好", "equation": "x=2*3", "ans": "6"},
        {"id": "2", "original_text": "错", "equation": "x=2*3", "ans": "7"},
        {"id": "3", "original_text": "单位", "equation": "x=80千米/小时", "ans": "80"},
        {"id": "4", "original_text": "注入", "equation": "x=__import__('os')", "ans": "1"},
        {"id": "5", "original_text": "答案", "equation": "x=1", "ans": "一"},
    ]
    _math23k_file(tmp_path, records)
    with caplog.at_level(logging.INFO, logger="smartfed.data.sets.math23k"):
        examples = load_examples("math23k", "test", data_dir=tmp_path)
    assert [e.meta["id"] for e in examples] == ["1"]
    assert "kept 1, skipped 4" in caplog.text


def test_math23k_missing_field(tmp_path: Path) -> None:
    _math23k_file(tmp_path, [{"id": "1", "original_text": "题", "ans": "6"}])
    with pytest.raises(ConfigError) as excinfo:
        load_examples("math23k", "test", data_dir=tmp_path)
    assert "testset.json: record 0: missing field 'equation'" in _one_line_error(excinfo)


# DoIT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_dir", [None, "tmp"])
def test_doit_absent_says_how_to_get_it(tmp_path: Path, data_dir: str | None) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_examples("doit", "train", data_dir=tmp_path if data_dir else None)
    message = _one_line_error(excinfo)
    assert "DoIT is not included offline" in message
    assert "local copy" in message and "--data_dir" in message and DATA_DIR_ENV in message
    assert "doit/curated/full/code_full.json" in message


def test_doit_reads_its_published_format(tmp_path: Path) -> None:
    train = [
        {
            "messages": [
                {"role": "user", "content": "给你一个整数数组 nums，返回其和。"},
                {"role": "assistant", "content": "def f(nums):\n    return sum(nums)"},
            ],
            "idx": 7,
            "type": "code",
        },
        {
            "messages": [
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "写一个函数"},
                {"role": "assistant", "content": "def g(): pass"},
            ],
            "idx": 8,
            "type": "code",
        },
    ]
    _write(
        tmp_path,
        "doit/curated/full/code_full.json",
        "\n".join(json.dumps(r, ensure_ascii=False) for r in train) + "\n",
    )
    examples = load_examples("doit", "train", data_dir=tmp_path)
    assert examples[0].prompt == "给你一个整数数组 nums，返回其和。"
    assert examples[0].response == "def f(nums):\n    return sum(nums)"
    assert examples[0].meta == {"type": "code", "idx": 7, "question_format": 0, "source": "doit"}
    assert examples[1].prompt == "用户：你好\n助手：你好！\n写一个函数"

    test = {
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        "idx": 1,
        "type": "code",
        "question_format": 1,
        "choices": ["A", "B", "C"],
    }
    # A JSON list is accepted as well as JSON Lines.
    _write(tmp_path, "doit/curated/test/code_test.json", json.dumps([test]))
    [example] = load_examples("doit", "test", data_dir=tmp_path)
    assert example.meta["choices"] == ["A", "B", "C"]
    assert example.meta["question_format"] == 1

    _write(tmp_path, "doit/curated/test/code_test.json", json.dumps({"idx": 1}) + "\n")
    with pytest.raises(ConfigError) as excinfo:
        load_examples("doit", "test", data_dir=tmp_path)
    assert "code_test.json:1: missing field 'messages'" in _one_line_error(excinfo)


# zh_code -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instruction",
    [
        "编写一个 Python 程序来检查给定的字符串是否为回文。",
        "创建一个函数来计算两点之间的距离。",
        "构造一个 SQL 查询来查询所有客户的平均年龄",
        "编写一个算法来找到两个数组的交集。",
        "写一段C++代码",
        "用伪代码编写一个算法来解决给定的问题。",
    ],
)
def test_code_requests_are_recognised(instruction: str) -> None:
    assert is_code_request(instruction)


@pytest.mark.parametrize(
    ("instruction", "extra"),
    [
        ("为移动应用程序设计徽标。", ""),
        ("在法律背景下解释“正当程序”的概念。", ""),
        ("生成下面给出的 RGB 颜色代码的等效十六进制代码。", "RGB(255, 47, 147)"),
        ("编写销售电话脚本。", ""),
        ("找到以下函数的最低值", "6x^2 - 4x - 8"),
        ("用 3 句话概括内容。", "该研究着眼于使用机器学习算法来预测股票指数。"),
        ("说出三种类型的机器学习算法。", ""),
    ],
)
def test_non_code_requests_are_not(instruction: str, extra: str) -> None:
    assert not is_code_request(instruction, extra)


def test_code_in_the_input_counts() -> None:
    assert is_code_request("确定以下部分的主要缺陷。", "def add_numbers(x,y):\n    return x+y")


def test_zh_code_reads_both_files_and_holds_out_every_tenth(tmp_path: Path) -> None:
    translated = [
        {"instruction": f"编写一个函数来计算第 {i} 个数", "input": "", "output": f"答{i}"}
        for i in range(12)
    ] + [{"instruction": "写一首诗", "input": "", "output": "诗"}]
    _write(
        tmp_path,
        "zh_instruct/alpaca_zh_translated_5k.jsonl",
        "\n".join(json.dumps(r, ensure_ascii=False) for r in translated) + "\n",
    )
    train = load_examples("zh_code", "train", data_dir=tmp_path)
    test = load_examples("zh_code", "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (10, 2)  # matched records 0 and 10 are held out
    assert [e.meta["index"] for e in test] == [0, 10]

    gpt4 = [{"instruction": "写一个Python函数求和", "input": "", "output": "def s(a, b): ..."}]
    _write(tmp_path, "zh_instruct/alpaca_gpt4_zh_demo.json", json.dumps(gpt4, ensure_ascii=False))
    train = load_examples("zh_code", "train", data_dir=tmp_path)
    assert len(train) == 11
    assert train[-1].meta == {
        "source": "zh_code",
        "origin": "alpaca_gpt4_zh_demo",
        "index": 0,
    }


def test_gsm_hard_pal_is_gsm_hard_in_the_math_code_format(needs_data: Path) -> None:
    hard = load_examples("gsm_hard", "test", data_dir=needs_data)[:5]
    pal = load_examples("gsm_hard_pal", "test", data_dir=needs_data)[:5]
    trained = load_examples("gsm8k_pal", "test", data_dir=needs_data)[0]
    for h, p in zip(hard, pal, strict=True):
        assert p.prompt == pal_prompt(h.prompt) and p.response == fenced(h.response)
        assert p.meta == {"answer": h.meta["answer"], "source": "gsm_hard_pal"}
    # the same frame around the question and the program as math_code's training examples
    assert trained.prompt.endswith(PAL_INSTRUCTION) and pal[0].prompt.endswith(PAL_INSTRUCTION)
    assert trained.response.startswith("```python") and pal[0].response.startswith("```python")
