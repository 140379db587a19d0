"""MGSM (google-research/url-nlp): 250 GSM8K test problems translated into 10 languages.

One dataset per language, ``mgsm_<lang>`` for ``bn de en es fr ja ru sw te th zh``, each with a
single split ``test`` read from ``mgsm/mgsm_<lang>.tsv``. The files are TSV without a header, read
with ``csv.reader(f, delimiter="\\t", quoting=csv.QUOTE_NONE)`` (questions contain quote marks
that are not quoting); every row has 2 columns: the question and its numeric answer. Answers may
be written with thousands separators (``2,125`` in every language file) and are parsed into an
``int`` (a ``float`` if one ever has a non-zero decimal part); anything else is a one-line error
naming the file and line.

MGSM has no worked solutions, so the response is only the final-answer line: ``答案是 N。`` for
``zh`` and ``The answer is N.`` for every other language (the same line as the ``gsm8k`` targets).
It exists so that a loss can be computed on MGSM; accuracy is measured on the generated answer.

``meta``: ``answer`` (``int`` or ``float``), ``lang`` (the language code), ``source``
(``"mgsm"``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import register_dataset, require_field
from smartfed.errors import ConfigError

LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
HUB_ID = "juletxara/mgsm"
# An optional sign, digits with optional comma thousands separators, an optional decimal part.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def parse_answer(text: str) -> int | float:
    """``"2,125"`` -> 2125, ``"-3"`` -> -3, ``"2.50"`` -> 2.5; ValueError for anything else
    (including ``"2,5"``: a comma is only accepted as a thousands separator)."""
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    cleaned = text.strip().replace(",", "")
    if "." not in cleaned:
        return int(cleaned)
    value = float(cleaned)
    return int(value) if value.is_integer() else value


def answer_line(answer: int | float, lang: str) -> str:
    """The final-answer sentence of the response in ``lang``."""
    return f"答案是 {answer}。" if lang == "zh" else f"The answer is {answer}."


def read_mgsm_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], lang: str
) -> Iterator[Example]:
    """Examples of MGSM ``(location, record)`` pairs: ``question`` (a string) and ``answer`` (a
    number, or its text as in the TSV files)."""
    for where, record in records:
        question = require_field(record, "question", where, None, kind=str)
        raw_answer = require_field(record, "answer", where, None, kind=(str, int, float))
        if not question.strip():
            raise ConfigError(f"{where}: empty question")
        try:
            if isinstance(raw_answer, bool):
                raise ValueError(raw_answer)
            answer = raw_answer if isinstance(raw_answer, int | float) else parse_answer(raw_answer)
        except ValueError:
            raise ConfigError(f"{where}: answer {raw_answer!r} is not a number") from None
        yield Example(
            prompt=question.strip(),
            response=answer_line(answer, lang),
            meta={"answer": answer, "lang": lang, "source": "mgsm"},
        )


def mgsm_tsv_records(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(path:line, {"question", "answer"})`` of one MGSM TSV file; errors name file and line."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                line_no = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != 2:
                    raise ConfigError(
                        f"{path}:{line_no}: expected 2 tab-separated columns (question, answer), "
                        f"got {len(row)}"
                    )
                yield f"{path}:{line_no}", {"question": row[0], "answer": row[1]}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def read_mgsm_tsv(path: Path, lang: str) -> Iterator[Example]:
    """Examples of one MGSM TSV file; errors name the file and line."""
    return read_mgsm_records(mgsm_tsv_records(path), lang)


def _register(lang: str) -> None:
    def read_hub_rows(
        records: Iterable[tuple[str, Mapping[str, Any]]], split: str
    ) -> Iterator[Example]:
        return read_mgsm_records(records, lang)

    @register_dataset(
        f"mgsm_{lang}",
        splits={"test": f"mgsm/mgsm_{lang}.tsv"},
        description=f"MGSM grade-school maths in {lang!r}, answer-only targets (url-nlp)",
        # One config per language; its test split has "answer_number" (the hub's "answer" holds
        # worked solutions, empty on test).
        hub=HubSource(
            HUB_ID,
            read=read_hub_rows,
            config=lang,
            splits={"test": "test"},
            columns={"question": "question", "answer_number": "answer"},
        ),
        meta_fields=("answer", "lang", "source"),
        split_sizes={"test": 250},
    )
    def read_mgsm(path: Path, split: str) -> Iterator[Example]:
        return read_mgsm_tsv(path, lang)


for _lang in LANGUAGES:
    _register(_lang)
