import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from pipeline import adapters
from pipeline.adapters import (
    AdapterDataError,
    AdapterJob,
    compose_adapters,
    encode_examples,
    plan_jobs,
    read_task_data,
    train_adapter,
)
from pipeline.adapter_registry import find_adapter, format_registry, read_registry
from tests.conftest import random_adapter

pytestmark = pytest.mark.timeout(600)
SEEDS = [{"lang": "yor", "text": "Gbogbo ènìyàn ni a bí ní òmìnira."}, {"lang": "kha", "text": "Ki briew baroh ki kha laitluid."}]


def delta_weights(base: str, path: str) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)
    return {name: module.get_delta_weight("default") for name, module in model.named_modules() if hasattr(module, "lora_A")
            and "default" in module.lora_A}


def test_composition_is_exactly_task_plus_t_times_the_language_difference(tiny_generator, tmp_path):
    for name, seed in (("task", 1), ("target", 2), ("source", 3)):
        random_adapter(tiny_generator, str(tmp_path / name), seed)
    out = str(tmp_path / "composed")
    compose_adapters(tiny_generator, *(str(tmp_path / n) for n in ("task", "target", "source")), 0.5, out)

    assert os.path.isfile(os.path.join(out, "adapter_config.json")), "a plain peft folder, as vLLM loads adapters"
    assert json.load(open(os.path.join(out, "adapter_config.json")))["r"] == 12, "cat stacks the three rank-4 factors"
    got = delta_weights(tiny_generator, out)
    task, target, source = (delta_weights(tiny_generator, str(tmp_path / n)) for n in ("task", "target", "source"))
    assert set(got) == set(task) and len(got) == 2 * 7, "every linear layer of both blocks"
    for name in got:
        expected = task[name] + 0.5 * (target[name] - source[name])
        torch.testing.assert_close(got[name], expected, atol=1e-6, rtol=1e-5)
        assert expected.abs().max() > 1e-3


def test_chat_examples_teach_only_the_answer_and_skip_what_does_not_fit(generator_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(generator_path)
    job = AdapterJob("x", "xllora", "positive", None, "test", chats=[
        adapters.chat_example("Ẹnikẹ́ni ní ẹ̀tọ́ sí ìyè.", "positive", "Everyone has the right to life."),
        adapters.chat_example("word " * 300, "positive", "Too long."),
    ])
    encoded = encode_examples(tokenizer, job, max_length=128, limit=10, seed=0)
    assert len(encoded) == 1, "the over-long chat is skipped, not truncated"
    ids, labels = encoded[0]
    learned = tokenizer.decode([t for t in labels if t != -100])
    assert learned == "Everyone has the right to life.<|im_end|>\n"
    assert labels[:len(labels) - len(tokenizer(learned, add_special_tokens=False)["input_ids"])] == \
        [-100] * (len(labels) - len(tokenizer(learned, add_special_tokens=False)["input_ids"]))
    assert "Sentence: Ẹnikẹ́ni" in tokenizer.decode(ids)


def test_training_an_adapter_lowers_its_loss_and_saves_a_peft_folder(tiny_generator, make_config, tmp_path):
    job = AdapterJob("lang-yor", "language", None, "yor", "test", texts=["Gbogbo ènìyàn ni a bí ní òmìnira."] * 4)
    cfg = make_config(adapters={"steps": 20, "batch_size": 2, "lr": 5e-2, "rank": 4}).adapters
    stats = train_adapter(tiny_generator, job, cfg, str(tmp_path / "a"), seed=0)
    # A random 64-wide model has tiny logits, so even memorising one sentence moves its loss slowly (deterministic run).
    assert stats["loss_last"] < stats["loss_first"] - 0.2
    assert json.load(open(tmp_path / "a" / "adapter_config.json"))["r"] == 4
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items()), "B starts at zero: training moved it"


def test_jobs_follow_the_strategies_and_skip_external_adapters(make_config):
    icl = plan_jobs(make_config(), SEEDS)
    assert icl == []
    cfg = make_config(synthesis={"strategies": ["xllora", "composition"]}, adapters={"external": {"lang-kha": "/somewhere"}})
    jobs = {j.name: j for j in plan_jobs(cfg, SEEDS)}
    assert set(jobs) == {"xllora-positive", "xllora-negative", "task-positive", "task-negative", "lang-fra", "lang-yor"}
    assert len(jobs["xllora-positive"].chats) == 10000
    assert jobs["lang-yor"].texts == [SEEDS[0]["text"]], "a target language adapter learns from its training seeds"
    assert len(jobs["lang-fra"].texts) > 40, "the source language adapter learns from the bundled UDHR"
    assert 500 < len(jobs["task-positive"].chats) < 1000, "task adapters learn from the French-anchored pairs"


def test_bad_task_data_names_the_file_and_record(tmp_path):
    path = tmp_path / "nli.jsonl"
    path.write_text('{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "a", "positive": "b"}\n')
    with pytest.raises(AdapterDataError, match=r"nli.jsonl: record 2 has no negative"):
        read_task_data(str(path))
    path.write_text('{"anchor": "a"\n')
    with pytest.raises(AdapterDataError, match=r"nli.jsonl:1: not valid JSON"):
        read_task_data(str(path))


def test_stage_trains_composes_and_registers_every_adapter(ray_local, make_config, tiny_generator, tmp_path):
    seeds = tmp_path / "train.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(SEEDS), seeds)
    cfg = make_config(languages=["yor", "kha"], generator={"model": tiny_generator},
                      synthesis={"strategies": ["icl", "xllora", "composition"]},
                      adapters={"steps": 2, "batch_size": 2, "rank": 4})
    result = adapters.run(cfg, {"train": str(seeds)}, str(tmp_path / "adapters"))

    registry = read_registry(result.outputs["registry"])
    names = {r["name"] for r in registry}
    assert names == {"xllora-positive", "xllora-negative", "task-positive", "task-negative", "lang-fra", "lang-yor", "lang-kha",
                     "composition-positive-yor", "composition-negative-yor", "composition-positive-kha",
                     "composition-negative-kha"}
    assert all(os.path.isfile(os.path.join(r["path"], "adapter_config.json")) for r in registry)
    assert find_adapter(registry, "xllora", "negative", "kha")["name"] == "xllora-negative"
    assert find_adapter(registry, "composition", "positive", "kha")["name"] == "composition-positive-kha"
    assert find_adapter(registry, "composition", "positive", "quc") is None
    assert result.counts == {"adapters": 11, "trained": 7}
    table = format_registry(registry)
    assert "composition-negative-kha" in table and "task-negative + 1 * (lang-kha - lang-fra)" in table


def test_external_adapters_are_registered_not_trained(ray_local, make_config, tiny_generator, tmp_path):
    import pyarrow as pa

    seeds = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(SEEDS), seeds)
    for role, seed in (("positive", 1), ("negative", 2)):
        random_adapter(tiny_generator, str(tmp_path / f"published-{role}"), seed)
    external = {f"xllora-{role}": str(tmp_path / f"published-{role}") for role in ("positive", "negative")}
    cfg = make_config(generator={"model": tiny_generator}, synthesis={"strategies": ["xllora"]}, adapters={"external": external})
    result = adapters.run(cfg, {"train": str(seeds)}, str(tmp_path / "adapters"))
    registry = read_registry(result.outputs["registry"])
    assert result.counts == {"adapters": 2, "trained": 0}
    assert {r["name"]: r["path"] for r in registry} == external
    assert all(r["data"].startswith("external: ") for r in registry)

    cfg = make_config(generator={"model": tiny_generator}, synthesis={"strategies": ["xllora"]},
                      adapters={"external": {"xllora-positive": str(tmp_path)}})
    with pytest.raises(AdapterDataError, match=r"has no adapter_config.json \(not a peft adapter folder\)"):
        adapters.run(cfg, {"train": str(seeds)}, str(tmp_path / "adapters2"))
