"""Many LoRA adapters on one base encoder in a replica: each batch computes with its own adapter, side by side.

The replica loads the base encoder once and puts a switch around each of its Linear layers. A batch runs with its
adapters active in its own context (a contextvar, so each encoding thread sees only its own): a switch adds its
layer's low-rank update, scale * B(A(x)), for each row whose adapter has one, and is the plain layer otherwise.
A batch mixes requests of many adapters (so it is as large as one model's batch would be: with 100 adapters in use
and a batch per adapter, batches held one request each), and one forward pass computes all of them: each layer
gathers its rows' A and B and applies them with two batched matmuls. Nothing on the model changes per batch, so
`concurrent_batches` batches compute at the same time.
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

from pipeline import cpu_linear, encoder_lora
from serve._backends import Backend, default_prompt, normalise, padded
from serve._encoder import AdapterMismatchError

ACTIVE: contextvars.ContextVar[Active | None] = contextvars.ContextVar("bootembed_active_adapter", default=None)


@dataclass
class Active:
    """The adapters of the batch being encoded in this context, and how many layer updates they applied so far.

    One adapter: every row gets it. Several (a mixed batch): `rows` gives each row's adapter (an index into
    `adapters`) for the forward pass running now, and each layer gathers its rows' A and B from stacks built once per
    batch, so one pass computes every adapter's rows (two batched matmuls per layer, no loop over adapters).
    """

    adapters: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]  # each: {module path: (A [r, in], scale * B [out, r])}
    rows: torch.Tensor | None = None  # [n] adapter index of each row of the current pass (mixed batches)
    applied: int = 0
    stacks: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)

    def stack(self, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A [k, r, in], B [k, out, r]) of layer `path` over the batch's k adapters, ranks zero-padded to the
        largest (a zero row of A and column of B add nothing); None when no adapter changes this layer."""
        if path not in self.stacks:
            updates = [u.get(path) for u in self.adapters]
            present = [u for u in updates if u is not None]
            if not present:
                self.stacks[path] = None
            else:
                rank = max(a.shape[0] for a, _ in present)
                a0, b0 = present[0]
                a_stack = a0.new_zeros((len(updates), rank, a0.shape[1]))
                b_stack = b0.new_zeros((len(updates), b0.shape[0], rank))
                for k, update in enumerate(updates):
                    if update is not None:
                        a_stack[k, : update[0].shape[0]] = update[0]
                        b_stack[k, :, : update[1].shape[1]] = update[1]
                self.stacks[path] = (a_stack, b_stack)
        return self.stacks[path]

    def layers(self) -> int:
        """Layers one forward pass updates: every layer that any of the batch's adapters changes."""
        return len(set().union(*self.adapters))

    def check(self, names: list[str]) -> None:
        """Raise unless every forward pass applied the update of every adapted layer (else: not the adapters' vectors)."""
        if self.applied == 0 or self.applied % self.layers():
            raise RuntimeError(f"adapters {names} were applied {self.applied} times over {self.layers()} layers: not a "
                               "whole number of passes, so these would not be their vectors; refused")


class LoraSwitch(torch.nn.Module):
    """A Linear layer plus the active adapters' low-rank updates for it, if they have one."""

    def __init__(self, base: torch.nn.Linear, path: str):
        super().__init__()
        self.base, self.path = base, path
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        active = ACTIVE.get()
        if active is None:
            return out
        if len(active.adapters) == 1:
            update = active.adapters[0].get(self.path)
            if update is None:
                return out
            a, b = update
            active.applied += 1
            return out + torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b).to(out.dtype)
        stack = active.stack(self.path)
        if stack is None:
            return out
        a, b = stack  # [k, r, in], [k, out, r]
        active.applied += 1
        rows = active.rows
        flat = x.to(a.dtype).reshape(x.shape[0], -1, x.shape[-1])  # [n, t, in] (t = 1 for a 2-d input)
        low = torch.bmm(flat, a[rows].transpose(1, 2))  # [n, t, r]
        return out + torch.bmm(low, b[rows].transpose(1, 2)).reshape(out.shape).to(out.dtype)  # [n, t, out]


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
        active = Active([self.updates])
        token = ACTIVE.set(active)
        try:
            vectors = encode(inputs, batch_size)
        finally:
            ACTIVE.reset(token)
        active.check([self.name])
        return vectors


@dataclass
class MixedAdapters:
    """A batch of requests for several adapters, encoded together: each input with its own adapter (`owners`)."""

    base: Backend
    adapters: dict[str, AdaptedBackend]

    max_seq_length = property(lambda self: self.base.max_seq_length)
    tokenizer = property(lambda self: self.base.tokenizer)
    dimension = property(lambda self: self.base.dimension)

    def encode(self, texts: list[str], batch_size: int, owners: list[str]) -> np.ndarray:
        if len(set(owners)) == 1:
            return self.adapters[owners[0]].encode(texts, batch_size)
        model, prompt = self.base.model, default_prompt(self.base.model)
        return self._mixed(texts, owners, batch_size, lambda chunk: model.preprocess(chunk, prompt=prompt))

    def encode_ids(self, ids: list[list[int]], batch_size: int, owners: list[str]) -> np.ndarray:
        if len(set(owners)) == 1:
            return self.adapters[owners[0]].encode_ids(ids, batch_size)
        tokenizer = self.base.tokenizer
        names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

        def features(chunk: list[list[int]]) -> dict:
            arrays = padded(chunk, tokenizer)
            return {name: torch.from_numpy(arrays[name]) for name in names}

        return self._mixed(ids, owners, batch_size, features)

    def _mixed(self, inputs: list, owners: list[str], batch_size: int, features_of) -> np.ndarray:
        """Vectors of `inputs`, `batch_size` at a time in order of length (less padding), each pass with each row's
        adapter."""
        names = list(dict.fromkeys(owners))
        index = {name: k for k, name in enumerate(names)}
        active = Active([self.adapters[name].updates for name in names])
        model = self.base.model
        order = np.argsort([-len(x) for x in inputs], kind="stable")
        out = np.empty((len(inputs), self.dimension), dtype=np.float32)
        token = ACTIVE.set(active)
        try:
            with torch.inference_mode():
                for start in range(0, len(inputs), batch_size):
                    rows = order[start:start + batch_size]
                    features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                                for k, v in features_of([inputs[i] for i in rows]).items()}
                    active.rows = torch.tensor([index[owners[i]] for i in rows], device=model.device)
                    out[rows] = model(features)["sentence_embedding"].float().cpu().numpy()
        finally:
            ACTIVE.reset(token)
        active.check(names)
        return normalise(out)


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
        if device == "cpu":
            cpu_linear.accelerate(model)  # the base's products through oneDNN where faster (AMD CPUs), as fp32 serving
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
