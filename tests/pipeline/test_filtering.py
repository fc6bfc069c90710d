from pipeline.filtering import filter_rows, langid_code
from pipeline.prompts import fewshot_pool


def row(i, anchor="Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", pos="Everyone has the right to life.", neg="Nobody has any right to live.",
        status="ok", lang="yor"):
    return {"id": str(i), "lang": lang, "strategy": "icl", "anchor": anchor, "positive": pos, "negative": neg, "status": status}


ECHO = fewshot_pool()["negative"][0][1]  # a few-shot example's answer: what a small generator echoes


def test_each_bad_row_is_dropped_with_its_reason_and_good_rows_kept(make_config):
    cfg = make_config()
    rows = [
        row(0),
        row(1, status="negative:unparseable:empty"),
        row(2, pos="Yes."),
        row(3, pos="Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè"),
        row(4, neg="Everyone has the right to life"),
        row(5, pos="x" * 500),
        row(6),
        row(7, pos="Toute personne a droit à la vie, à la liberté et à la sûreté de sa personne."),
        row(8, neg=ECHO),
        row(9, pos=ECHO.upper() + " "),
        {**row(10, pos="Everyone may live.", neg=ECHO), "strategy": "parallel"},
        {**row(11, pos=ECHO, neg="Nobody may live."), "strategy": "parallel"},
    ]
    kept, dropped = filter_rows(rows, cfg)
    assert [r["id"] for r in kept] == ["0", "11"], "a human positive is never the generator's echo"
    reasons = {r["id"]: r["reason"] for r in dropped}
    assert reasons == {
        "1": "generation:negative:unparseable:empty",
        "2": "positive_too_short",
        "3": "positive_copies_anchor",
        "4": "positive_equals_negative",
        "5": "positive_too_long",
        "6": "duplicate",
        "7": "positive_wrong_language",
        "8": "negative_copies_example",
        "9": "positive_copies_example",
        "10": "negative_copies_example",
    }


def test_language_check_can_be_switched_off_and_skips_unknown_languages(make_config):
    french = row(0, pos="Toute personne a droit à la vie, à la liberté et à la sûreté de sa personne.")
    kept, _ = filter_rows([french], make_config(filter={"language_check": False}))
    assert len(kept) == 1
    assert langid_code("eng") == "en"
    assert langid_code("quc") is None  # py3langid does not know K'iche': it must not judge it
    same = make_config(synthesis={"output_language": "same"})
    kept, _ = filter_rows([row(0, pos="Ri winaq ronojel kekʼiy pa ronojel uwach.", neg="Man jun winaq ta kekʼiy.", lang="quc")], same)
    assert len(kept) == 1


def test_margin_filter_drops_triplets_the_base_encoder_ranks_the_wrong_way(make_config, minilm_path):
    from pipeline.filtering import apply_margin

    cfg = make_config(train={"encoder": minilm_path, "prefix": ""}, filter={"margin": 0.0})
    good = row(0, anchor="The cat sleeps on the warm sofa.", pos="A cat is sleeping on a couch.", neg="The stock market fell sharply today.")
    bad = row(1, anchor="The cat sleeps on the warm sofa.", pos="The stock market fell sharply today.", neg="A cat is sleeping on a couch.")
    kept, dropped = apply_margin([good, bad], cfg)
    assert [r["id"] for r in kept] == ["0"]
    assert [(r["id"], r["reason"]) for r in dropped] == [("1", "margin_below_threshold")]
    assert apply_margin([good, bad], make_config()) == ([good, bad], [])  # off by default


def test_the_margin_filter_spares_human_pairs_and_the_stage_writes_fidelity(make_config, e5_path, minilm_path, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import filtering as filter_stage

    reference = "Everyone has the right to life, liberty and security of person."
    rows = [{**row(i, anchor="Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè àti òmìnira àti ààbò ara rẹ̀.", pos=reference,
                   neg="Nobody has any right to live at all."), "strategy": s, "reference": reference}
            for i, s in enumerate(["icl", "parallel"])]
    cfg = make_config(train={"encoder": e5_path}, filter={"margin": 2.0, "fidelity_encoder": minilm_path})  # no triplet passes 2.0
    kept, failed = filter_stage.apply_margin(rows, cfg)
    assert [r["strategy"] for r in kept] == ["parallel"] and [r["strategy"] for r in failed] == ["icl"]

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "generations.parquet")
    result = filter_stage.run(cfg, {"generations": str(tmp_path / "generations.parquet")}, str(tmp_path))
    scores = json.loads((tmp_path / "fidelity.json").read_text())
    assert set(scores["per_strategy"]) == {"icl", "parallel"} and scores["encoder"] == minilm_path
    assert scores["per_strategy"]["parallel"]["positive_cos"] > 0.99  # the positive is the reference itself
    assert result.details["fidelity"] == scores["per_strategy"] and result.outputs["fidelity"].endswith("fidelity.json")
