"""pipeline.cpu_linear: oneDNN linears compute what torch's own do, forward and backward, and only where they may."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from pipeline import cpu_linear

needs_onednn = pytest.mark.skipif(not cpu_linear.available(), reason="this torch has no oneDNN linear")


@pytest.fixture
def choice(monkeypatch):
    """Set BOOTEMBED_CPU_LINEAR for one test; the per-process decision is recomputed before and after."""

    def set_choice(value: str) -> None:
        monkeypatch.setenv("BOOTEMBED_CPU_LINEAR", value)
        cpu_linear.use_onednn.cache_clear()

    yield set_choice
    cpu_linear.use_onednn.cache_clear()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False)


def step(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs and gradients of a training step (dropout on, drawn from one seed)."""
    model.train()
    model.zero_grad()
    torch.manual_seed(1)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    (out.mean(1) ** 2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_onednn
def test_a_switched_model_trains_as_torch_computes_it(choice):
    choice("onednn")
    reference, switched = tiny_bert(), tiny_bert()
    assert cpu_linear.accelerate(switched)
    assert {type(m) for m in switched.modules()} & {torch.nn.Linear, cpu_linear.OneDNNLinear} == {cpu_linear.OneDNNLinear}
    assert switched.state_dict().keys() == reference.state_dict().keys()
    ids = torch.randint(0, 100, (3, 7))

    out, grads = step(switched, ids)
    ref_out, ref_grads = step(reference, ids)

    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    with torch.inference_mode():
        switched.eval(), reference.eval()
        torch.testing.assert_close(switched(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


@needs_onednn
def test_outside_fp32_on_the_cpu_it_computes_as_torch_does(choice):
    choice("onednn")
    layer = torch.nn.Linear(8, 4)
    plain = copy.deepcopy(layer)
    cpu_linear.accelerate(layer)
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == plain(x).dtype == torch.bfloat16
        torch.testing.assert_close(layer(x), plain(x))
    assert torch.equal(layer.double()(x.double()), plain.double()(x.double()))  # float64: F.linear itself
    vector = torch.randn(8, dtype=torch.float64)
    assert torch.equal(layer(vector), plain(vector))


@needs_onednn
def test_a_switched_module_pickles_and_switches_back(choice):
    choice("onednn")
    layer = torch.nn.Linear(8, 4)
    cpu_linear.accelerate(layer)
    copied = pickle.loads(pickle.dumps(layer))
    assert type(copied) is cpu_linear.OneDNNLinear
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(copied(x), layer(x))
    cpu_linear.restore(layer)
    assert type(layer) is torch.nn.Linear


def test_the_environment_overrides_the_measurement(choice):
    choice("mkl")
    model = tiny_bert()
    assert not cpu_linear.accelerate(model)
    assert not any(isinstance(m, cpu_linear.OneDNNLinear) for m in model.modules())
    choice("fast")
    with pytest.raises(ValueError, match="BOOTEMBED_CPU_LINEAR='fast'"):
        cpu_linear.accelerate(model)


def test_quantised_and_wrapped_linears_are_left_alone(choice):
    choice("onednn")

    class Wrapped(torch.nn.Linear):  # a subclass computes its own way (peft's, torch's quantised ones)
        pass

    model = torch.nn.Sequential(Wrapped(4, 4), torch.nn.Linear(4, 4))
    cpu_linear.accelerate(model)
    assert type(model[0]) is Wrapped
    assert type(model[1]) is (cpu_linear.OneDNNLinear if cpu_linear.available() else torch.nn.Linear)
