"""Prompts the generator is asked with, and how its answers are read: shared by synthesis and adapter training.

An adapter is trained on the zero-shot prompt synthesis later sends it (`build_messages(..., num_shots=0)`), so both
stages take the prompt from here. Pure functions: no model, no Ray.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

import pycountry

from pipeline.corpus import xnli_pairs
from pipeline.engines import OK  # the one "no problem" status of every engine and of generations rows

ROLES = ("positive", "negative")
ROLE_INSTRUCTIONS = {
    "positive": "Write one {language} sentence that means the same as the sentence below, or that follows from it.",
    "negative": "Write one {language} sentence on the same topic as the sentence below that contradicts it.",
}
SYSTEM_PROMPT = "You write single sentences for a dataset of sentence pairs. Answer with the sentence only."
_LABEL = re.compile(r"^\s*(sentence|answer|output|positive|negative|hypothesis|english|translation|response)\s*\d*\s*[:：-]\s*", re.I)
_REFUSAL = re.compile(r"^(i'?m sorry|i am sorry|i cannot|i can'?t|as an ai|sorry,)", re.I)


def language_name(code: str) -> str:
    lang = pycountry.languages.get(alpha_3=code)
    return lang.name if lang else code


def is_short_latin(text: str, limit: int) -> bool:
    # Byte-level tokenizers spend 3-4x more tokens on other scripts; prompt length is generation time.
    return len(text) <= limit and all(ord(c) < 0x250 for c in text)


@lru_cache(maxsize=1)
def fewshot_pool() -> dict[str, list[tuple[str, str]]]:
    """Short Latin-script (anchor, output) pairs per role from the bundled cross-lingual NLI pairs."""
    rows = xnli_pairs()
    return {
        role: [(r["anchor"], r["output"]) for r in rows if r["role"] == role and is_short_latin(r["anchor"], 110) and len(r["output"]) <= 90]
        for role in ROLES
    }


def build_messages(anchor: str, role: str, shot_key: str, output_language: str, num_shots: int) -> list[dict]:
    """A few-shot chat for one anchor and role; shots are chosen by `shot_key` and the role, so reruns are identical.

    Synthesis keys the shots by language: every prompt of a language and role then differs only in its last turn, and
    the hf engine computes the shared few-shot part once per batch (measured on the demo: 168 of 279 prompt tokens).
    """
    instruction = ROLE_INSTRUCTIONS[role].format(language=output_language)
    shots = random.Random(f"{shot_key}/{role}").sample(fewshot_pool()[role], num_shots)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for shot_anchor, shot_output in shots:
        messages.append({"role": "user", "content": f"{instruction}\nSentence: {shot_anchor}"})
        messages.append({"role": "assistant", "content": shot_output})
    messages.append({"role": "user", "content": f"{instruction}\nSentence: {anchor}"})
    return messages


def parse_answer(raw: str) -> tuple[str | None, str]:
    """(sentence, "ok") or (None, reason) for one generated answer."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    if not lines:
        return None, "unparseable:empty"
    text = _LABEL.sub("", lines[0]).strip().strip("\"'“”«»").strip()
    if not text:
        return None, "unparseable:label_only"
    if _REFUSAL.match(text):
        return None, "unparseable:refusal"
    return text, OK
