"""Linear layers through oneDNN where torch's default fp32 matrix product is slow: on AMD CPUs.

torch's CPU wheels compute an fp32 `F.linear` with Intel MKL's sgemm, which on AMD CPUs runs its AVX2 code path.
Measured on this project's 2-core AMD EPYC (Zen 5, AVX-512), e5-small's shapes: 191-218 GFLOPS through MKL, 442-485
through oneDNN (`torch.ops.mkldnn._linear_pointwise`, the kernel torch's own compiler emits for CPU linears), both in
full fp32 (outputs agree to ~1e-6, relative). On Intel CPUs the two are alike.

`accelerate(model)` makes every nn.Linear of a model compute through oneDNN where that is at least MIN_SPEEDUP times
faster on this machine (measured once per process, `onednn_speedup`): in inference, and in training through an
autograd function whose three products (output, input gradient, weight gradient) all go through oneDNN. The modules
stay nn.Linear (their class becomes a subclass with another forward): weights, state_dict, peft's wrapping, DDP's
hooks and pickling are unchanged. Anything but fp32 on the CPU (a GPU, bf16 autocast, half precision) takes F.linear
as before.

BOOTEMBED_CPU_LINEAR=mkl|onednn overrides the measurement (default auto).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch
import torch.nn.functional as F

MIN_SPEEDUP = 1.2
PROBE = (2048, 384, 1536)  # tokens, in, out: e5-small's feed-forward on 16 texts of 128 tokens
CHOICES = ("auto", "mkl", "onednn")
LOG = logging.getLogger(__name__)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with every product through oneDNN: dx = dy W, dW = dy^T x (as linears of transposed copies:
    copying costs less than MKL's slower product on these CPUs)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        flat = grad.reshape(-1, grad.shape[-1])  # [tokens, out]
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t().contiguous(), None)
        if ctx.needs_input_grad[1]:
            grad_weight = _onednn(flat.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


class OneDNNLinear(torch.nn.Linear):
    """An nn.Linear whose fp32 CPU products go through oneDNN; anything else goes through F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not eligible(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return _onednn(x, self.weight, self.bias)


def eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() >= 2 and not torch.is_autocast_enabled("cpu"))


def accelerate(model: torch.nn.Module) -> bool:
    """Switch every nn.Linear of `model` to OneDNNLinear when oneDNN is the faster fp32 product here; whether it did."""
    if not use_onednn():
        return False
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # not subclasses (quantised, peft's): they compute their own way
            module.__class__ = OneDNNLinear
    return True


def restore(model: torch.nn.Module) -> None:
    """Undo `accelerate`: plain nn.Linear again."""
    for module in model.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = torch.nn.Linear


@functools.lru_cache(maxsize=None)
def use_onednn() -> bool:
    """BOOTEMBED_CPU_LINEAR, or (auto) whether oneDNN computes the probe product MIN_SPEEDUP times faster than F.linear."""
    choice = os.environ.get("BOOTEMBED_CPU_LINEAR", "auto")
    if choice not in CHOICES:
        raise ValueError(f"BOOTEMBED_CPU_LINEAR={choice!r}: expected one of {', '.join(CHOICES)}")
    has_onednn = available()
    if choice == "mkl" or not has_onednn:
        LOG.info("fp32 linear layers: torch's default (BOOTEMBED_CPU_LINEAR=%s, oneDNN available: %s)", choice, has_onednn)
        return False
    if choice == "onednn":
        return True
    speedup = onednn_speedup()
    LOG.info("fp32 linear layers: %s (oneDNN %.2fx torch's default on a %dx%dx%d product; %.1fx needed)",
             "oneDNN" if speedup >= MIN_SPEEDUP else "torch's default", speedup, *PROBE, MIN_SPEEDUP)
    return speedup >= MIN_SPEEDUP


def available() -> bool:
    """Whether this torch has oneDNN's linear and computes the probe product right with it."""
    try:
        x, weight, bias = probe_tensors()
        return torch.allclose(_onednn(x, weight, bias), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError):  # a build without oneDNN, or a CPU it does not support
        return False


def probe_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, n_in, n_out = PROBE
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(tokens, n_in, generator=generator), torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5,
            torch.randn(n_out, generator=generator))


def onednn_speedup(repeats: int = 5) -> float:
    """F.linear's time over oneDNN's on the probe product, each the best of `repeats` (with torch's current threads)."""
    x, weight, bias = probe_tensors()

    def best(fn) -> float:
        fn(x, weight, bias)  # warm-up: oneDNN builds its kernel on the first call
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x, weight, bias)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(F.linear) / best(_onednn)
