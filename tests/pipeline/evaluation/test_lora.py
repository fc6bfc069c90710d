"""LoRA encoders as one model per strategy, and each language's adapter paired with the full fine-tune of the same data,
from hand-made per-item scores."""

import numpy as np
import pytest

from pipeline.evaluation.lora import (FULL, LORA, NO_FULL, adapter_evaluations, composite_items, composites, lora_variants,
                                      pair_lora, shown_metrics)
from pipeline.evaluation.summary import summarise_tasks

VECTORS = ("hit1_to", "rr_to", "ndcg_to", "hit1_from", "rr_from", "ndcg_from")


def retrieval(to_eng: list[float], from_eng: list[float]) -> dict:
    """Per-query retrieval items: hit@1 (and, for brevity, the same values as rr and nDCG) both ways."""
    to_eng, from_eng = np.array(to_eng), np.array(from_eng)
    return {"hit1_to": to_eng, "rr_to": to_eng, "ndcg_to": to_eng, "hit1_from": from_eng, "rr_from": from_eng,
            "ndcg_from": from_eng, "f1_to": float(to_eng.mean()), "f1_from": float(from_eng.mean())}


def bli(hits: list[float]) -> dict:
    return {"hit1": np.array(hits), "hit5": np.array(hits)}


# model -> task -> lang -> items. yor: the parallel adapter finds 2 of 4 where the full fine-tune finds 3 (x->eng).
ITEMS = {
    "base": {"retrieval": {"yor": retrieval([0, 0, 1, 0], [0, 0, 0, 1]), "kha": retrieval([0, 0, 0, 0], [0, 0, 1, 0])},
             "bli": {"yor": bli([0, 1, 0])}},
    "parallel": {"retrieval": {"yor": retrieval([1, 1, 1, 0], [1, 0, 1, 1]), "kha": retrieval([1, 0, 0, 0], [0, 1, 1, 0])},
                 "bli": {"yor": bli([1, 1, 0])}},
    "icl": {"retrieval": {"yor": retrieval([0, 0, 1, 0], [0, 0, 0, 1]), "kha": retrieval([0, 0, 0, 0], [0, 0, 1, 0])},
            "bli": {"yor": bli([0, 1, 0])}},
    "lora-yor-parallel": {"retrieval": {"yor": retrieval([1, 0, 1, 0], [1, 0, 1, 1]), "kha": retrieval([0, 0, 0, 0], [0, 0, 0, 0])},
                          "bli": {"yor": bli([1, 1, 1])}},
    "lora-kha-parallel": {"retrieval": {"yor": retrieval([0, 0, 0, 0], [0, 0, 0, 0]), "kha": retrieval([1, 1, 0, 0], [0, 1, 1, 0])},
                          "bli": {"yor": bli([0, 0, 0])}},
    "lora-yor-icl": {"retrieval": {"yor": retrieval([0, 1, 1, 0], [0, 0, 0, 1]), "kha": retrieval([0, 0, 0, 0], [0, 0, 0, 0])},
                     "bli": {"yor": bli([0, 1, 0])}},
}
# the train manifest's details.variants of the LoRA encoders (per: language_strategy; no kha adapter for icl)
VARIANTS = {
    "lora-yor-parallel": {"adapter": "yor-parallel", "language": "yor", "strategy": "parallel", "triplets": 27,
                          "adapter_bytes": 2_700_000},
    "lora-kha-parallel": {"adapter": "kha-parallel", "language": "kha", "strategy": "parallel", "triplets": 25,
                          "adapter_bytes": 2_700_000},
    "lora-yor-icl": {"adapter": "yor-icl", "language": "yor", "strategy": "icl", "triplets": 4, "adapter_bytes": 2_700_000},
}


@pytest.fixture
def cfg(make_config):
    return make_config(languages=["yor", "kha"], synthesis={"strategies": ["parallel", "icl"]},
                       evaluate={"tasks": ["bli"], "bootstrap_samples": 200})


def evaluated(cfg, items=ITEMS, variants=VARIANTS):
    """(items with the adapters replaced by their composites, metrics["tasks"], composites) as the evaluate stage makes
    them; kha has no BLI dictionary."""
    groups = composites(variants, cfg.synthesis.strategies, cfg.languages)
    items = dict(items)
    for name, own in groups.items():
        items[name] = composite_items(items, {}, own, "base")[0]
    items = {m: v for m, v in items.items() if m not in variants}
    tasks = summarise_tasks(cfg, items, {m: {} for m in items}, {}, {"bli": {"kha": "no dictionary for kha"}}, {})
    return items, tasks, groups


def test_adapters_become_one_encoder_per_strategy_each_language_scored_by_its_own(cfg):
    groups = composites(VARIANTS, ["parallel", "icl"], ["yor", "kha"])
    assert groups == {"lora-parallel": {"yor": "lora-yor-parallel", "kha": "lora-kha-parallel"}, "lora-icl": {"yor": "lora-yor-icl"}}
    assert composites({"lora-yor": {"adapter": "yor", "language": "yor", "strategy": None}}, ["icl"], ["yor"]) == \
        {"lora": {"yor": "lora-yor"}}
    failed = {**ITEMS, "lora-yor-icl": {**ITEMS["lora-yor-icl"], "bli": {}}}  # its BLI failed for yor, with a reason
    items, skipped = composite_items(failed, {"lora-yor-icl": {"bli": {"yor": "probe failed"}}}, groups["lora-icl"], "base")
    assert items["retrieval"]["yor"] is ITEMS["lora-yor-icl"]["retrieval"]["yor"]
    assert items["retrieval"]["kha"] is ITEMS["base"]["retrieval"]["kha"]  # no kha adapter for icl: the base stands in
    assert "yor" not in items.get("bli", {}) and skipped == {"bli": {"yor": "probe failed"}}

    items, tasks, _ = evaluated(cfg)
    assert list(items) == ["base", "parallel", "icl", "lora-parallel", "lora-icl"]
    yor = tasks["retrieval"]["per_language"]["yor"]
    assert yor["lora-parallel"]["x->eng acc@1"] == 0.5 and tasks["retrieval"]["per_language"]["kha"]["lora-parallel"]["x->eng acc@1"] == 0.5


def test_each_language_is_paired_with_the_full_fine_tune_of_its_adapters_strategy(cfg):
    items, tasks, groups = evaluated(cfg)
    pairing = pair_lora(cfg, items, tasks, groups, VARIANTS, {"parallel": 470_000_000, "icl": 470_000_000})
    parallel = pairing["strategies"]["parallel"]
    assert parallel["same_data"] and parallel["full_bytes"] == 470_000_000 and parallel["lora"] == "lora-parallel"
    assert parallel["adapters"] == {
        "yor": {"model": "lora-yor-parallel", "adapter": "yor-parallel", "triplets": 27, "bytes": 2_700_000},
        "kha": {"model": "lora-kha-parallel", "adapter": "kha-parallel", "triplets": 25, "bytes": 2_700_000}}
    ret = parallel["tasks"]["retrieval"]
    yor = ret["per_language"]["yor"]
    assert (yor[FULL]["x->eng acc@1"], yor[LORA]["x->eng acc@1"]) == (0.75, 0.5)  # its own adapter, not kha's
    assert ret["per_language"]["kha"][LORA]["x->eng acc@1"] == 0.5  # kha scored by lora-kha-parallel
    lo, hi = yor[LORA]["delta_ci"]["x->eng acc@1"]
    assert lo <= -0.25 <= hi and 0 < yor[LORA]["delta_p"]["x->eng acc@1"] <= 1
    assert ret["average"][FULL]["x->eng acc@1"] == pytest.approx((0.75 + 0.25) / 2)
    assert ret["average"][LORA]["x->eng acc@1"] == pytest.approx((0.5 + 0.5) / 2)
    assert ret["average"][LORA]["n"] == 8 and ret["average"][LORA]["languages"] == 2
    assert len(ret["delta_ci"][LORA]["x->eng acc@1"]) == 2 and LORA in ret["delta_p"]
    # BLI: kha has no dictionary, so only yor is paired there
    assert list(parallel["tasks"]["bli"]["per_language"]) == ["yor"]
    assert parallel["tasks"]["bli"]["average"][LORA]["P@1"] == 1.0
    assert parallel["without_adapter"] == []

    icl = pairing["strategies"]["icl"]
    assert list(icl["adapters"]) == ["yor"] and list(icl["tasks"]["retrieval"]["per_language"]) == ["yor"]
    assert icl["tasks"]["retrieval"]["per_language"]["yor"][LORA]["x->eng acc@1"] == 0.5
    assert icl["without_adapter"] == ["kha"]  # scored with the base in lora-icl, left out of the pairing
    assert pairing["skipped"] == {}


def test_a_strategy_without_its_full_fine_tune_is_skipped_with_the_fix(cfg):
    items, tasks, groups = evaluated(cfg, {m: v for m, v in ITEMS.items() if m != "icl"})  # keep_full_finetune false
    pairing = pair_lora(cfg, items, tasks, groups, VARIANTS, {})
    assert pairing["skipped"] == {"icl": NO_FULL} and "keep_full_finetune" in NO_FULL
    assert list(pairing["strategies"]) == ["parallel"] and pairing["strategies"]["parallel"]["full_bytes"] is None


def test_per_language_adapters_stand_beside_every_strategy_marked_as_other_data(cfg):
    items = {"base": ITEMS["base"], "parallel": ITEMS["parallel"], "icl": ITEMS["icl"], "lora-yor": ITEMS["lora-yor-parallel"]}
    variants = {"lora-yor": {"adapter": "yor", "language": "yor", "strategy": None, "triplets": 31}}
    items, tasks, groups = evaluated(cfg, items, variants)
    assert list(items) == ["base", "parallel", "icl", "lora"]
    pairing = pair_lora(cfg, items, tasks, groups, variants, {})
    assert list(pairing["strategies"]) == ["parallel", "icl"]
    for strategy in ("parallel", "icl"):
        pair = pairing["strategies"][strategy]
        assert not pair["same_data"] and pair["lora"] == "lora" and pair["adapters"]["yor"]["model"] == "lora-yor"
        assert pair["adapters"]["yor"]["bytes"] is None  # a train manifest written before adapter_bytes
        assert pair["tasks"]["retrieval"]["per_language"]["yor"][FULL]["x->eng acc@1"] == \
            np.mean(ITEMS[strategy]["retrieval"]["yor"]["hit1_to"])


def test_each_adapter_gets_its_own_languages_numbers_against_base_and_full(cfg):
    items, tasks, groups = evaluated(cfg)
    pairing = pair_lora(cfg, items, tasks, groups, VARIANTS, {})
    evaluations = adapter_evaluations(tasks, pairing, groups, lora_variants({"variants": {"parallel": {"triplets": 50}, **VARIANTS}}))
    assert sorted(evaluations) == ["kha-parallel", "yor-icl", "yor-parallel"]
    yor = evaluations["yor-parallel"]
    assert (yor["language"], yor["strategy"], yor["model"], yor["triplets"]) == ("yor", "parallel", "lora-yor-parallel", 27)
    assert yor["scores"]["retrieval"] == {"x->eng acc@1": 0.5, "eng->x acc@1": 0.75, "n": 4}
    assert yor["scores"]["bli"] == {"P@1": 1.0, "n": 3}
    assert yor["vs_base"]["retrieval"]["x->eng acc@1"]["delta"] == pytest.approx(0.5 - 0.25)
    assert len(yor["vs_base"]["retrieval"]["x->eng acc@1"]["ci"]) == 2
    assert yor["vs_full"]["parallel"]["retrieval"]["x->eng acc@1"]["delta"] == pytest.approx(-0.25)
    assert yor["vs_full"]["parallel"]["retrieval"]["eng->x acc@1"]["delta"] == pytest.approx(0.0)
    assert "bli" not in evaluations["kha-parallel"]["scores"]  # kha has no dictionary
    assert list(evaluations["yor-icl"]["vs_full"]) == ["icl"]


def test_shown_metrics_are_the_primary_and_its_reverse_direction():
    assert shown_metrics("retrieval", ["x->eng acc@1", "eng->x acc@1", "x->eng MRR@10"]) == ["x->eng acc@1", "eng->x acc@1"]
    assert shown_metrics("bli", ["P@1", "P@5"]) == ["P@1"]
    assert lora_variants(None) == {} and lora_variants({"variants": {"icl": {"triplets": 3}}}) == {}
