"""Many LoRA adapters on one base encoder in a replica: each batch computes with its own adapter, side by side.

The replica loads the base encoder once and puts a switch around each of its Linear layers. A batch runs with one
adapter active in its own context (a contextvar, so each encoding thread sees only its own): a switch adds its
layer's low-rank update, scale * B(A(x)), when the active adapter has one, and is the plain layer otherwise. Nothing
on the model changes per batch, so `concurrent_batches` batches of different adapters compute at the same time.
peft's own multi-adapter paths (`set_adapter`, or `adapter_names=` forward hooks) change state on the shared modules
while a forward runs, which two threads would overwrite for each other; its saved adapters are read here
(pipeline/encoder_lora.read_adapter), and the tests check every adapter's vectors against peft's merged model.

Safety: an adapter is only applied to the base whose weights' SHA-256 it records (else AdapterMismatchError: a 400),
and every encode counts the low-rank updates it applied: none, or a count that is not a whole number of passes over
the adapter's layers, raises instead of returning vectors, so a request for an adapter never gets base vectors.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline import encoder_lora
from serve._backends import Backend
from serve._encoder import AdapterMismatchError

ACTIVE: contextvars.ContextVar[Active | None] = contextvars.ContextVar("bootembed_active_adapter", default=None)


@dataclass
class Active:
    """The adapter of the batch being encoded in this context, and how many layer updates it applied so far."""

    updates: dict[str, tuple[torch.Tensor, torch.Tensor]]  # {module path: (A [r, in], scale * B [out, r])}
    applied: int = 0


class LoraSwitch(torch.nn.Module):
    """A Linear layer plus the active adapter's low-rank update for it, if the adapter has one."""

    def __init__(self, base: torch.nn.Linear, path: str):
        super().__init__()
        self.base, self.path = base, path
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        active = ACTIVE.get()
        update = active.updates.get(self.path) if active is not None else None
        if update is None:
            return out
        a, b = update
        active.applied += 1
        low_rank = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b)  # [..., out]
        return out + low_rank.to(out.dtype)


def install_switches(model: torch.nn.Module) -> dict[str, LoraSwitch]:
    """Put a LoraSwitch around every Linear layer of `model` (in place); {module path: switch}."""
    switches = {}
    for path, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear):
            parent_path, _, attribute = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            switches[path] = LoraSwitch(module, path)
            setattr(parent, attribute, switches[path])
    return switches


@dataclass
class AdaptedBackend:
    """The replica's base encoder seen through one adapter: the Backend interface the Encoder deployment uses."""

    base: Backend
    name: str
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]]
    load_seconds: float = 0.0

    max_seq_length = property(lambda self: self.base.max_seq_length)
    tokenizer = property(lambda self: self.base.tokenizer)
    dimension = property(lambda self: self.base.dimension)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self._with_adapter(self.base.encode, texts, batch_size)

    def encode_ids(self, ids: list[list[int]], batch_size: int) -> np.ndarray:
        return self._with_adapter(self.base.encode_ids, ids, batch_size)

    def _with_adapter(self, encode, inputs: list, batch_size: int) -> np.ndarray:
        active = Active(self.updates)
        token = ACTIVE.set(active)
        try:
            vectors = encode(inputs, batch_size)
        finally:
            ACTIVE.reset(token)
        # Each forward pass goes through every adapted layer once: anything else means some pass ran without it.
        if active.applied == 0 or active.applied % len(self.updates):
            raise RuntimeError(f"adapter {self.name!r} was applied {active.applied} times over {len(self.updates)} "
                               "layers: not a whole number of passes, so these would not be its vectors; refused")
        return vectors


@dataclass
class LoraBase:
    """The base encoder of a replica that serves adapters: loaded once, its weights hashed, its Linear layers switched."""

    backend: Backend
    folder: str
    sha256: str
    switches: dict[str, LoraSwitch] = field(repr=False)

    @classmethod
    def load(cls, folder: str, device: str) -> LoraBase:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(folder, device=device)
        transformer = model[0].auto_model
        sha256 = encoder_lora.weights_sha256(transformer)  # before fp16: adapters record the fp32 weights' hash
        switches = install_switches(transformer)
        backend = Backend(model.half(), "torch-fp16-lora") if device != "cpu" else Backend(model, "torch-lora")
        return cls(backend, folder, sha256, switches)

    def adapter(self, name: str, folder: str) -> AdaptedBackend:
        """The adapter at `folder` on this base.

        Raises:
            AdapterMismatchError: it was trained on another encoder, or names layers this base lacks or shapes it has not.
            encoder_lora.AdapterError: the folder is missing, truncated or unreadable.
        """
        started = time.perf_counter()
        meta, weights = encoder_lora.read_adapter(folder)
        if meta["base_sha256"] != self.sha256:
            raise AdapterMismatchError(
                f"adapter {name!r} was trained on another encoder (weights SHA-256 {meta['base_sha256'][:12]}...) than "
                f"this server's base {self.folder} ({self.sha256[:12]}...); serve it on the encoder it was trained on")
        device = self.backend.model.device
        updates = {}
        for path, (a, b, scale) in weights.items():
            switch = self.switches.get(path)
            if switch is None or a.shape[1] != switch.in_features or b.shape[0] != switch.out_features \
                    or a.shape[0] != b.shape[1]:
                raise AdapterMismatchError(f"adapter {name!r} has a {tuple(b.shape)} x {tuple(a.shape)} update for "
                                           f"layer {path!r}, which this server's base {self.folder} does not have")
            updates[path] = (a.to(device), (b * scale).to(device))
        return AdaptedBackend(self.backend, name, updates, time.perf_counter() - started)
