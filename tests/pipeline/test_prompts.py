"""Prompts and answer parsing (pure): what synthesis asks the generator, and how it reads the answer."""

import pytest

from pipeline.engines import OK
from pipeline.prompts import build_messages, parse_answer


@pytest.mark.parametrize("raw, expected", [
    ("Everyone has the right to live.", ("Everyone has the right to live.", OK)),
    ("  Sentence: \"Everyone may live.\"\nExplanation: ...", ("Everyone may live.", OK)),
    ("Positive 1: All people are free.", ("All people are free.", OK)),
    ("", (None, "unparseable:empty")),
    ("   \n  ", (None, "unparseable:empty")),
    ("Answer:", (None, "unparseable:label_only")),
    ("I'm sorry, I cannot help with that.", (None, "unparseable:refusal")),
])
def test_parse_answer_keeps_the_sentence_and_names_what_it_rejects(raw, expected):
    assert parse_answer(raw) == expected


def test_prompts_are_few_shot_chats_whose_shots_follow_the_shot_key():
    a = build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "yor", "English", 2)
    b = build_messages("Ọmọnìyàn ni gbogbo ènìyàn.", "negative", "yor", "English", 2)
    c = build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "kha", "English", 2)
    assert a[:-1] == b[:-1], "one key, one few-shot context: only the last turn differs"
    assert a != c and a == build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "yor", "English", 2)
    assert [m["role"] for m in a] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "contradicts" in a[-1]["content"] and a[-1]["content"].endswith("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.")
    positive = build_messages("x", "positive", "yor-1", "English", 0)
    assert "means the same" in positive[-1]["content"] and len(positive) == 2
