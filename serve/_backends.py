"""Where an encoder's vectors are computed: the model's own torch modules, or its graph exported to ONNX Runtime or
OpenVINO, in fp32 or int8.

Every backend keeps the sentence-transformers model for what happens before the network (its prompt, tokenizer,
truncation at `max_seq_length`); the exported graph is the model's whole module chain (transformer, its pooling,
e.g. the avg_first_last layer pooling of pipeline/train.py, and normalisation), traced from the loaded model, so it
computes what the model computes.

* torch: the model as loaded; int8 is torch's dynamic quantisation of the Linear layers, weights per output
  channel, the feed-forward down-projections left fp32 (done at load, in a fraction of a second; nothing cached).
* onnx: `torch.onnx.export` of the module chain, run by ONNX Runtime; int8 is ONNX Runtime's dynamic quantisation
  (int8 weights per output channel, activations quantised per batch; down-projections left fp32).
* openvino: the same ONNX graph compiled by OpenVINO; int8 is NNCF's static quantisation, calibrated on fixed
  multilingual sentences (the bundled cross-lingual NLI pairs).

An export is built once per model content, backend and quantisation, in `<export_dir>/<model>-<sha256 of the model's
files>/<backend>-<quantize>/`, under a file lock (replicas starting together build it once), and reused on the next
start. A build is checked before it is kept: the vectors of PROBE_TEXTS must be within MIN_COSINE of the torch fp32
model's, else it is refused with the smallest cosine it reached. Its manifest records every file's SHA-256 and the
probe vectors it gave: on load, a missing or changed file, or different probe vectors, means the export is rebuilt
(the log names the file); a rebuild that still fails its checks is refused with an ExportError, never served.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZE = ("none", "int8")
# Smallest cosine to the torch fp32 vectors that a build may reach on PROBE_TEXTS. int8 paths measured .97-.99 on
# e5-small and MiniLM; a broken export (wrong pooling, wrong padding) lands far below.
MIN_COSINE = {"none": 0.999, "int8": 0.95}
PROBE_AGREEMENT = 0.9999
CALIBRATION_TEXTS = 128  # sentences that calibrate OpenVINO's static int8 activation ranges  # a loaded export must give the vectors its manifest recorded at build time
# Packages each exported backend needs (module -> pip name), checked before Ray starts.
NEEDS = {"onnx": {"onnxruntime": "onnxruntime", "onnx": "onnx"},
         "openvino": {"openvino": "openvino", "onnx": "onnx", "nncf": "nncf"}}
INSTALL_HINT = "pip install 'bootembed[cpu-fast]'"
MANIFEST = "manifest.json"
GRAPH = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
OPSET = 17
# Fixed texts of several scripts and lengths (some longer than a short max_seq_length): the build's check, the
# load's check, and OpenVINO int8's calibration set. Never change them without bumping EXPORT_FORMAT.
PROBE_TEXTS = [
    "Good morning, how are you today?",
    "All human beings are born free and equal in dignity and rights.",
    "Ẹ kú àárọ̀, ṣé dáadáa ni?",
    "Kila mtu anayo haki ya kuishi, uhuru na usalama wa nafsi yake.",
    "Tout individu a droit à la vie, à la liberté et à la sûreté de sa personne.",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.",
    "人人生而自由，在尊严和权利上一律平等。",
    "कोई भी ग़ुलामी या दासता की हालत में न रखा जाएगा।",
    "river", "market day",
    "The teacher walked to the village school in the rain, carrying bread and letters for the children. " * 6,
    "Nadie será sometido a torturas ni a penas o tratos crueles, inhumanos o degradantes.",
    "Jeder hat das Recht auf Freiheit der Meinungsäußerung.",
    "Ang bawat tao ay may karapatan sa buhay, kalayaan at kapanatagan ng sarili.",
    "Kowane mutum yana da ikon samun 'yancin tunani.",
    "Herkes yaşama, özgürlüğe ve kişi güvenliğine hakkı vardır.",
]
EXPORT_FORMAT = 2  # bump when what is exported, or how it is checked, changes: old exports are then rebuilt

log = logging.getLogger("bootembed.serve")


class ExportError(RuntimeError):
    """An export could not be built, or its checks failed after a rebuild: the model is not served on this path."""


def missing_packages(backend: str) -> list[str]:
    """The pip names of the packages `backend` needs that are not installed (none for torch)."""
    return [pip for module, pip in NEEDS.get(backend, {}).items() if importlib.util.find_spec(module) is None]


def check_installed(backend: str) -> None:
    """Raise ValueError naming what to install when `backend`'s packages are missing (before Ray starts)."""
    missing = missing_packages(backend)
    if missing:
        raise ValueError(f"backend {backend!r} needs {', '.join(missing)}, not installed here: {INSTALL_HINT} "
                         f"(or `pip install {' '.join(missing)}`), or serve with backend torch")


# ---------------------------------------------------------------- the encoder a replica uses


@dataclass
class Backend:
    """A loaded model and the graph that computes its vectors (`graph` None: its own torch modules compute them)."""

    model: object  # the SentenceTransformer: prompt, tokenizer, max_seq_length (and the compute when graph is None)
    name: str  # "torch", "onnx-int8", ...
    graph: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    inputs: tuple[str, ...] = ()  # the graph's input names, tokenizer outputs such as input_ids, attention_mask

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit vectors [len(texts), dim] float32, texts encoded `batch_size` at a time in order of length."""
        if self.graph is None:
            return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False).astype(np.float32)
        prompt = default_prompt(self.model)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers: less padding
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            features = self.model.preprocess([texts[i] for i in rows], prompt=prompt)
            out[rows] = self.graph({name: features[name].numpy() for name in self.inputs})
        return normalise(out)

    def encode_ids(self, ids: list[list[int]], batch_size: int) -> np.ndarray:
        """Unit vectors of token id sequences, read as given: no prompt, no special tokens added (as vLLM and TEI);
        each sequence at most max_seq_length long (the caller truncates or refuses)."""
        order = np.argsort([-len(s) for s in ids], kind="stable")
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        names = self.inputs or tuple(n for n in self.tokenizer.model_input_names
                                     if n in ("input_ids", "attention_mask", "token_type_ids"))
        for start in range(0, len(ids), batch_size):
            rows = order[start:start + batch_size]
            features = padded([ids[i] for i in rows], self.tokenizer)
            features = {name: features[name] for name in names}
            out[rows] = self.graph(features) if self.graph is not None else self._torch_forward(features)
        return normalise(out)

    def _torch_forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        device = self.model.device
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(device) for k, v in features.items()}
            return self.model(tensors)["sentence_embedding"].float().cpu().numpy()


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def padded(ids: list[list[int]], tokenizer) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids [n, longest] of id sequences, padded on the tokenizer's side."""
    width = max(len(s) for s in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(ids), width), pad, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, s in enumerate(ids):
        span = slice(width - len(s), width) if tokenizer.padding_side == "left" else slice(0, len(s))
        input_ids[i, span], mask[i, span] = s, 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def default_prompt(model) -> str | None:
    """The prompt `model.encode` puts before every text when none is named (a trained model's prefix)."""
    name = getattr(model, "default_prompt_name", None)
    return model.prompts.get(name) if name else None


def load(source: str, backend: str, quantize: str, device: str, threads: int, streams: int, export_dir: str) -> Backend:
    """The model at `source` (a sentence-transformers folder or hub id) on `backend`, in fp32 or int8.

    `threads` compute each batch, `streams` batches run at once (the replica's concurrent_batches). GPUs (device
    "cuda") run torch in fp16; the app's arguments reject other backends on a GPU before anything starts.

    Raises:
        ExportError: the export could not be built, or failed its checks after a rebuild.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device=device)
    if device != "cpu":
        return Backend(model.half(), "torch-fp16")
    if backend == "torch":
        from pipeline import cpu_linear

        if quantize == "none":
            cpu_linear.accelerate(model)  # oneDNN where MKL's fp32 product is slow (AMD CPUs): pipeline/cpu_linear.py
            return Backend(model, "torch")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        reference = Backend(model, "torch").encode(PROBE_TEXTS, batch_size=8)
        # Per output channel, as for ONNX Runtime: per tensor, MiniLM's vectors fell to cosine .83 of fp32.
        # Down-projections stay fp32 (see onnx_down_projections).
        linear = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and m.in_features <= m.out_features}
        quantize_dynamic(model, linear, dtype=torch.qint8, inplace=True)
        cpu_linear.accelerate(model)  # the down-projections left in fp32
        quantized = Backend(model, "torch-int8")
        cosine = float(np.min(np.sum(quantized.encode(PROBE_TEXTS, batch_size=8) * reference, axis=1)))
        if not np.isfinite(cosine) or cosine < MIN_COSINE["int8"]:
            raise ExportError(f"torch int8 of {source} gives vectors too far from its fp32 ones: smallest cosine "
                              f"{cosine:.4f} on the probe texts, at least {MIN_COSINE['int8']} needed; serve this model "
                              "with quantize none")
        return quantized
    check_installed(backend)
    folder = export_folder(source, model, backend, quantize, export_dir)
    return Exported(model, source, backend, quantize, folder, threads, streams).load()


# ---------------------------------------------------------------- exports: where, build, check, load


def export_folder(source: str, model, backend: str, quantize: str, export_dir: str) -> Path:
    """<export_dir>/<model name>-<first 16 hex digits of the model files' SHA-256>/<backend>-<quantize>."""
    folder = model_folder(source, model)
    digest = model_digest(folder)
    return Path(os.path.expanduser(export_dir)) / f"{folder.name}-{digest[:16]}" / f"{backend}-{quantize}"


def model_folder(source: str, model) -> Path:
    """The local folder a model was loaded from (for a hub id, its snapshot in the Hugging Face cache)."""
    if os.path.isdir(os.path.expanduser(source)):
        return Path(os.path.expanduser(source)).resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def model_digest(folder: Path) -> str:
    """SHA-256 over every file of a model folder (relative path and content), in path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts)):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Exported:
    """One export of a model: built into `folder` if needed, checked, and loaded as a Backend."""

    def __init__(self, model, source: str, backend: str, quantize: str, folder: Path, threads: int, streams: int):
        self.model, self.source, self.backend, self.quantize, self.folder = model, source, backend, quantize, folder
        self.threads, self.streams = threads, streams
        self.inputs = graph_inputs(model)
        self.name = f"{backend}-{'fp32' if quantize == 'none' else quantize}"

    def load(self) -> Backend:
        from filelock import FileLock

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder) + ".lock"):
            problem = self.problem()
            if problem is None:
                graph = self.open()
                problem = self.probe_problem(graph)
                if problem is None:
                    return Backend(self.model, self.name, graph, self.inputs)
            if self.folder.exists():
                log.warning("rebuilding the %s export in %s: %s", self.name, self.folder, problem)
                shutil.rmtree(self.folder)
            self.build()
            graph = self.open()
            problem = self.probe_problem(graph)
            if problem is not None:
                raise ExportError(f"the {self.name} export just built in {self.folder} fails its check ({problem}); "
                                  "serve this model with backend torch")
            return Backend(self.model, self.name, graph, self.inputs)

    def problem(self) -> str | None:
        """Why the export in `folder` cannot be used as it is (None: every file is there as recorded)."""
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            return "no export yet" if not self.folder.exists() else f"{manifest} is missing (an interrupted build?)"
        try:
            recorded = json.loads(manifest.read_text())
            files = recorded["files"]
        except (ValueError, KeyError, TypeError) as err:
            return f"{manifest} is unreadable ({type(err).__name__})"
        if recorded.get("format") != EXPORT_FORMAT:
            return f"{manifest} is of export format {recorded.get('format')}, this version writes {EXPORT_FORMAT}"
        for name, digest in files.items():
            path = self.folder / name
            if not path.is_file():
                return f"{path} is missing"
            if file_sha256(path) != digest:
                return f"{path} differs from the file built (SHA-256 mismatch: corrupt or overwritten)"
        return None

    def probe_problem(self, graph) -> str | None:
        """Why the loaded graph's vectors of PROBE_TEXTS are not those recorded at build time (None: they are)."""
        recorded = np.asarray(json.loads((self.folder / MANIFEST).read_text())["probe_vectors"], dtype=np.float32)
        got = Backend(self.model, self.name, graph, self.inputs).encode(PROBE_TEXTS, batch_size=8)
        agreement = float(np.min(np.sum(got * normalise(recorded), axis=1)))
        if not np.isfinite(agreement) or agreement < PROBE_AGREEMENT:
            return (f"its vectors of the probe texts differ from those recorded when it was built (smallest cosine "
                    f"{agreement:.5f} < {PROBE_AGREEMENT})")
        return None

    def build(self) -> None:
        """Export, quantise, check against the torch fp32 model, then move into place with its manifest last."""
        reference = Backend(self.model, "torch").encode(PROBE_TEXTS, batch_size=8)
        work = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}-", dir=self.folder.parent))
        try:
            with tempfile.TemporaryDirectory(dir=self.folder.parent, prefix=".onnx-") as scratch:
                fp32 = Path(scratch) / "fp32.onnx"
                export_onnx(self.model, self.inputs, fp32)
                if self.backend == "onnx":
                    if self.quantize == "int8":
                        from onnxruntime.quantization import QuantType, quantize_dynamic

                        # Per output channel: per tensor, MiniLM's vectors fell to cosine .86 of fp32 (.99 so).
                        # Down-projections stay fp32 (see onnx_down_projections).
                        quantize_dynamic(str(fp32), str(work / "model.onnx"), weight_type=QuantType.QInt8,
                                         per_channel=True, nodes_to_exclude=onnx_down_projections(fp32))
                    else:
                        shutil.move(fp32, work / "model.onnx")
                else:
                    self.build_openvino(fp32, work / "model.xml")
            graph = self.open(work)
            got = Backend(self.model, self.name, graph, self.inputs).encode(PROBE_TEXTS, batch_size=8)
            cosine = float(np.min(np.sum(got * reference, axis=1)))
            if not np.isfinite(cosine) or cosine < MIN_COSINE[self.quantize]:
                raise ExportError(f"the {self.name} export of {self.source} gives vectors too far from "
                                  f"the torch fp32 model's: smallest cosine {cosine:.4f} on the probe texts, at least "
                                  f"{MIN_COSINE[self.quantize]} needed; serve this model with backend torch")
            manifest = {"format": EXPORT_FORMAT, "backend": self.backend, "quantize": self.quantize,
                        "inputs": list(self.inputs), "min_cosine_to_torch_fp32": round(cosine, 5),
                        "versions": versions(self.backend), "probe_vectors": np.round(got, 7).tolist(),
                        "files": {name: file_sha256(work / name) for name in GRAPH[self.backend]}}
            (work / MANIFEST).write_text(json.dumps(manifest))
            os.replace(work, self.folder)  # the whole folder appears at once, manifest included
            log.info("built the %s export in %s (smallest cosine to torch fp32 %.4f)", self.name, self.folder, cosine)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_openvino(self, onnx_path: Path, out: Path) -> None:
        import openvino as ov

        model = ov.Core().read_model(str(onnx_path))
        if self.quantize == "int8":
            import nncf

            texts, prompt = calibration_texts(), default_prompt(self.model)
            calibration = [{name: array.numpy() for name, array in self.model.preprocess(texts[i:i + 8], prompt=prompt)
                            .items() if name in self.inputs} for i in range(0, len(texts), 8)]
            model = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration))
        ov.save_model(model, str(out), compress_to_fp16=False)

    def open(self, folder: Path | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """The graph in `folder` (default: the export's), as a function of the tokenizer's arrays."""
        folder = folder or self.folder
        if self.backend == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            # No spin-waiting between ops: spinning threads took CPU from the proxy and the other batch (cf. torch's
            # OMP_WAIT_POLICY note in the README).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
            return lambda features: session.run(None, features)[0]
        import openvino as ov

        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {
            "INFERENCE_NUM_THREADS": self.threads * self.streams, "NUM_STREAMS": self.streams,
            "ENABLE_CPU_PINNING": False})  # pinned threads fight whatever else runs on a shared machine
        local = threading.local()  # an infer request per thread: `streams` batches run side by side

        def run(features: dict[str, np.ndarray]) -> np.ndarray:
            if not hasattr(local, "request"):
                local.request = compiled.create_infer_request()
            return local.request.infer(features)[0].copy()

        return run


def calibration_texts(count: int = CALIBRATION_TEXTS) -> list[str]:
    """`count` sentences of the bundled cross-lingual NLI pairs (pipeline/corpus/xnli_pairs.parquet: 14 languages
    and their English side), spread evenly over it in its fixed order: OpenVINO int8's calibration set, the same on
    every machine. Not UDHR text, on which the quality cost of int8 is measured (benchmarks/bench_int8_quality.py)."""
    from importlib import resources

    import pyarrow.parquet as pq

    with resources.as_file(resources.files("pipeline.corpus") / "xnli_pairs.parquet") as path:
        table = pq.read_table(path, columns=["anchor", "output"])
    rows = np.linspace(0, table.num_rows - 1, count // 2).astype(int)
    anchors, outputs = table.column("anchor").to_pylist(), table.column("output").to_pylist()
    return [text for i in rows for text in (anchors[i], outputs[i])]


def onnx_down_projections(path: Path) -> list[str]:
    """MatMul nodes of the graph at `path` whose weight maps a wider input to a narrower output (the feed-forward
    block's second layer, intermediate -> hidden size): dynamic int8 keeps them fp32.

    Their input, after GELU, has outliers that one int8 scale per batch flattens: on e5-small (UDHR bitext retrieval,
    12 languages <-> English, benchmarks/bench_int8_quality.py) quantising every weight MatMul cost 2.2 points of
    acc@1 against fp32, keeping these 12 of 72 in fp32 cost 1.0, for about a fifth of the weight MatMul work left
    in fp32.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {w.name: tuple(w.dims) for w in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and len(shape := weights.get(node.input[1], ())) == 2
            and shape[0] > shape[1]]


def graph_inputs(model) -> tuple[str, ...]:
    """The tokenizer arrays the model reads (input_ids, attention_mask and, for BERT, token_type_ids)."""
    features = model.preprocess(["probe"], prompt=default_prompt(model))
    if "prompt_length" in features and not all(getattr(m, "include_prompt", True) for m in model):
        raise ExportError("this model's pooling leaves its prompt out (include_prompt=False), which the exported "
                          "graphs do not reproduce; serve it with backend torch")
    return tuple(n for n in model.tokenizer.model_input_names if n in features)


def export_onnx(model, inputs: tuple[str, ...], path: Path) -> None:
    """The model's module chain, from tokenizer arrays to its sentence embedding, as an ONNX graph with dynamic
    batch and sequence length (TorchScript exporter: the dynamo exporter failed on Python-side checks here)."""
    import torch

    class Chain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(inputs, tensors)))["sentence_embedding"]

    example = model.preprocess(PROBE_TEXTS[:3], prompt=default_prompt(model))  # different lengths: padding traced
    # The tracer warns about Python conditions on shapes (mask length vs sequence length, causal or not): for an
    # encoder they hold at every shape, and each build is checked on texts of other lengths and batch sizes.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # indices here are never negative
        torch.onnx.export(Chain().eval(), tuple(example[n] for n in inputs), str(path), input_names=list(inputs),
                          output_names=["sentence_embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in inputs},
                                        "sentence_embedding": {0: "batch"}})


def versions(backend: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "sentence-transformers", "onnx", *(["onnxruntime"] if backend == "onnx" else
                                                                ["openvino", "nncf"])):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
