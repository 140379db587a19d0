"""Pull the final answer out of free-form generations: numbers for maths, code for programs.

Number extraction, in order of trust:

1. an explicit answer marker followed by a number: "The answer is 42", "#### 42", "answer: 42",
   "答案是 42", "答案：42", "答：42" (the last such marker in the text wins, since models often
   restate the question's numbers first);
2. otherwise the last number in the text.

Numbers may carry thousands separators ("1,080"), signs, decimals, currency ("$5"), percent signs
(kept as the number: MGSM answers are written without "%"), full-width digits ("４２", handled by
NFKC normalisation) and Chinese thousands separators ("，"). A plain fraction "3/4" is read as
0.75. Chinese numerals written as words ("四十二") are not parsed: the models in scope answer with
digits, and a wrong parse would be worse than a miss.
"""

from __future__ import annotations

import math
import re
import unicodedata

_NUMBER = r"[-+−]?\$?\s?(?:\d{1,3}(?:[,，]\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"
NUMBER = re.compile(_NUMBER)
_MARKERS = (
    r"####",
    r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?",
    r"answer\s*[:=]",
    r"答案\s*(?:是|为|為|:|：)",
    r"答\s*[:：]",
    r"所以\s*(?:答案)?\s*(?:是|为)",
)
MARKED = re.compile(
    r"(?:" + "|".join(_MARKERS) + r")\s*[:：]?\s*(?:\\boxed\{)?\s*(" + _NUMBER + ")", re.I
)
CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)


def parse_number(text: str) -> float | None:
    """Value of one matched number string, or None when it is not a finite number."""
    cleaned = (
        text.replace("$", "").replace(",", "").replace("，", "").replace("−", "-").replace(" ", "")
    )
    try:
        if "/" in cleaned:
            numerator, denominator = cleaned.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def extract_number(text: str) -> float | None:
    """The final numeric answer of a maths generation (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    marked = MARKED.findall(text)
    if marked:
        return parse_number(marked[-1])
    numbers = NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def numbers_match(predicted: float | None, gold: float, *, abs_tol: float = 1e-4) -> bool:
    """Exact-answer comparison with a small tolerance for float formatting."""
    if predicted is None:
        return False
    return math.isclose(predicted, gold, rel_tol=1e-6, abs_tol=abs_tol)


def extract_code(text: str) -> str:
    """The first fenced code block of a generation (an unterminated one runs to the end); the
    whole text when there is no fence, since small models often answer with bare code."""
    match = CODE_BLOCK.search(text)
    return (match.group(1) if match else text).strip("\n")
