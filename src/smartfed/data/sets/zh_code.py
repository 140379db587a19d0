"""``zh_code``: Chinese coding requests, the offline stand-in for DoIT's Chinese code part.

DoIT (see :mod:`smartfed.data.sets.doit`) is not available offline, so this dataset collects the
Chinese instructions that ask for code from the two Chinese Alpaca-format files in
``zh_instruct/``: ``alpaca_zh_translated_5k.jsonl`` (machine-translated Alpaca) and, when it is
next to it, ``alpaca_gpt4_zh_demo.json`` (GPT-4 answers). Both splits are registered on the first
file; the reader reads the sibling file after it.

A record is a coding request (:func:`is_code_request`) when

* its **instruction**, after removing phrases where the keywords mean something else
  (:data:`NOT_CODE`: 应用程序 "app", 正当程序 "due process", 颜色代码 "colour code", 激活函数,
  机器学习算法, ...), matches :data:`CODE_REQUEST`: a programming language name (Python, Java,
  JavaScript, C++, C#, SQL, HTML, CSS, Bash, ...), 代码 / 伪代码, a C 程序 / C 代码, a verb of
  making (编写 写 创建 生成 实现 设计 构建 构造 开发 建立 指定) followed within the clause by
  函数 / 程序 / 算法, or 编写/创建 ... 脚本以/来 (not about a story, an ad or a dialogue); or
* its **input** contains code (:data:`CODE_INPUT`: ``def f(``, ``print(``, ``return``,
  ``for (``, ``console.log``, ``System.out``, ``#include``, a closing HTML/XML tag).

The keywords are matched in the instruction only (not the input) because inputs are often
articles that merely mention 算法 or 应用程序. The rule was tuned by reading every match of a
broad keyword regex (many of them about apps, ad scripts or maths functions); how many records
it keeps on the project's data files is in docs/results.md. Records with an empty output are
dropped first.

Split: matched records are numbered in reading order (translated file first); every 10th
(number ``% 10 == 0``) is in ``test`` and the rest in ``train``.

The prompt and response are built as for ``zh_instruct`` (instruction, then the input after a
blank line). ``meta``: ``source`` (``"zh_code"``), ``origin`` (the file's stem),
``index`` (the record's position in that file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from smartfed.data.examples import Example
from smartfed.data.registry import register_dataset, require_field
from smartfed.data.sets.instruct import alpaca_example, read_json_records

TRANSLATED_FILE = "zh_instruct/alpaca_zh_translated_5k.jsonl"
GPT4_SIBLING = "alpaca_gpt4_zh_demo.json"
HOLDOUT_EVERY = 10

NOT_CODE = re.compile(
    r"应用程序|正当程序|美容程序|修正程序|程序员|"
    r"(?:颜色|十六进制|错误|数字|位|二进制|邮政|国家|股票)代码|激活函数|波函数|"
    r"算法(?:公平|偏见|偏差)|机器学习算法"
)
_LANGUAGES = (
    r"(?<![A-Za-z])(?:[Pp]ython|Java|JavaScript|[Jj][Qq]uery|C\+\+|C#|Ruby|PHP|SQL|HTML|html|"
    r"CSS|Bash|shell|TypeScript|Golang|Rust|Swift|Kotlin)(?![A-Za-z])"
)
CODE_REQUEST = re.compile(
    _LANGUAGES + r"|(?<![A-Za-z])C\s*(?:程序|代码|语言)|伪代码|代码|"
    r"(?:编写|写|创建|生成|实现|设计|构建|构造|开发|建立|指定)[^。？！，,;；]{0,20}(?:函数|程序|算法)|"
    r"(?:编写|写|创建)[^。？，]{0,4}脚本(?:以|来)(?![^。？]*(?:故事|广告|对话))"
)
CODE_INPUT = re.compile(
    r"\bdef\s*\w+\s*[(（]|console\.log|System\.out|#include|\bprint\s*\(|\breturn\b|"
    r"\bfor\s*\(|</[A-Za-z]+>|&lt;/[A-Za-z]+&gt;"
)


def is_code_request(instruction: str, extra: str = "") -> bool:
    """Whether an Alpaca record (instruction, input) asks for code (see the module docstring)."""
    return bool(CODE_REQUEST.search(NOT_CODE.sub(" ", instruction)) or CODE_INPUT.search(extra))


def zh_code_files(path: Path) -> list[Path]:
    """The files read for ``path``: itself, then the GPT-4 sibling when it exists."""
    sibling = path.with_name(GPT4_SIBLING)
    return [path, sibling] if sibling.is_file() and sibling != path else [path]


@register_dataset(
    "zh_code",
    splits={"train": TRANSLATED_FILE, "test": TRANSLATED_FILE},
    description="Chinese coding requests from the zh_instruct files (offline DoIT-code stand-in)",
    meta_fields=("source", "origin", "index"),
)
def read_zh_code(path: Path, split: str) -> Iterator[Example]:
    matched = 0
    for file in zh_code_files(path):
        for index, (where, record) in enumerate(read_json_records(file)):
            instruction = require_field(record, "instruction", where, None, kind=str)
            extra = record.get("input", "")
            if not is_code_request(instruction, extra if isinstance(extra, str) else ""):
                continue
            example = alpaca_example(record, where, source="zh_code", index=index)
            if example is None:
                continue
            held_out = matched % HOLDOUT_EVERY == 0
            matched += 1
            if held_out == (split == "test"):
                example.meta["origin"] = file.stem
                yield example
