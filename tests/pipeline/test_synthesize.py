import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline import synthesize
from pipeline.synthesize import OK, build_messages, count_reasons, parse_answer

pytestmark = pytest.mark.timeout(600)


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


def test_prompts_are_few_shot_chats_chosen_reproducibly_per_row():
    a = build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "yor-1", "English", 2)
    b = build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "yor-1", "English", 2)
    c = build_messages("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "negative", "yor-2", "English", 2)
    assert a == b and a != c
    assert [m["role"] for m in a] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "contradicts" in a[-1]["content"] and a[-1]["content"].endswith("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.")
    positive = build_messages("x", "positive", "yor-1", "English", 0)
    assert "means the same" in positive[-1]["content"] and len(positive) == 2


def test_drop_reasons_are_counted_per_role():
    statuses = [OK, "positive:unparseable:empty", "positive:unparseable:empty;negative:engine_error:RuntimeError: boom", OK]
    assert count_reasons(statuses) == {"negative:engine_error": 1, "positive:unparseable:empty": 2}


def test_stage_generates_a_row_per_anchor_and_counts_a_too_long_prompt(ray_local, make_config, tmp_path, generator_path):
    anchors = [
        ("yor-a", "yor", "Gbogbo ènìyàn ni a bí ní òmìnira."),
        ("yor-b", "yor", "Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè àti òmìnira."),
        ("kha-a", "kha", "Ki briew baroh ki kha laitluid bad ki ong kumwei ha ka burom."),
        ("kha-long", "kha", "Ka jingshisha " * 120),
    ]
    seeds_path = tmp_path / "train.parquet"
    pq.write_table(pa.table({k: [a[i] for a in anchors] for i, k in enumerate(("id", "lang", "text"))}), seeds_path)
    cfg = make_config(generator={"max_new_tokens": 12, "max_prompt_tokens": 500, "batch_size": 4}, synthesis={"num_shots": 1})
    out = tmp_path / "synth"
    result = synthesize.run(cfg, {"train": str(seeds_path)}, str(out))

    rows = {r["id"]: r for r in pads.dataset(result.outputs["generations"]).to_table().to_pylist()}
    assert set(rows) == {a[0] for a in anchors}, "every anchor comes back exactly once"
    assert rows["kha-long"]["status"] == "positive:prompt_too_long;negative:prompt_too_long"
    assert result.counts["rows"] == 4 and result.details["drop_reasons"]["positive:prompt_too_long"] == 1
    for row_id in ("yor-a", "yor-b", "kha-a"):
        row = rows[row_id]
        assert row["raw_positive"] is not None and row["raw_negative"] is not None
        if row["status"] == OK:
            assert row["positive"] and row["negative"] and "\n" not in row["positive"]


def test_stage_rejects_seeds_without_the_columns_it_needs(make_config, tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sentence": ["x"]}), path)
    with pytest.raises(ValueError, match=r"synthesize: input .*bad.parquet lacks columns \['id', 'lang', 'text'\]"):
        synthesize.run(make_config(), {"train": str(path)}, str(tmp_path / "out"))
