"""What int8 serving costs in retrieval quality: acc@1 and nDCG@10 of each serving path against torch fp32, one run.

What it measures
    Bitext retrieval on UDHR paragraphs, as the evaluate stage scores it (pipeline/_eval_tasks.py's `rank_scores`):
    each paragraph of a language is a query, the English paragraphs the candidates, the aligned one relevant
    (x -> eng), and the other way round (eng -> x). Every serving path encodes the same texts through
    serve/_backends.py, exactly as a replica would (same exports, same prompt and pooling); the table gives the
    macro average over languages and both directions, and the difference to torch fp32 in points (x100).

    * default: a model (--model, default the bundled multilingual-e5-small, the encoder bootembed fine-tunes) on
      the bundled UDHR of --langs, every aligned paragraph a query;
    * --run RUN_DIR: the run's trained encoder(s) on the run's own held-out split (seeds/eval.parquet: queries are
      the held-out paragraphs only, candidates every English one), as `bootembed run` evaluates them.

Run
    python benchmarks/bench_int8_quality.py [--model bundled:all-minilm-l6-v2] [--langs yor kha quc swh]
        [--run runs/demo] [--paths torch-none torch-int8 onnx-int8 openvino-int8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

# The demo's three languages, then languages of other families and scripts the bundled UDHR has.
LANGS = ["yor", "kha", "quc", "swh", "hau", "zul", "amh", "tgl", "hin", "rus", "fra", "spa"]
PIVOT = "eng"


def udhr_items(langs: list[str]) -> tuple[dict[str, tuple[list[str], list[int]]], tuple[list[str], list[int]]]:
    """({lang: (texts, units)}, (English texts, units)) of the bundled UDHR, every paragraph a query."""
    from pipeline.corpus import load_udhr

    rows = load_udhr([*langs, PIVOT]).to_pylist()
    by_lang: dict[str, tuple[list[str], list[int]]] = {}
    for r in rows:
        texts, units = by_lang.setdefault(r["lang"], ([], []))
        texts.append(r["text"])
        units.append(r["unit"])
    return {lang: by_lang[lang] for lang in langs}, by_lang[PIVOT]


def run_items(run_dir: str) -> tuple[dict[str, tuple[list[str], list[int]]], tuple[list[str], list[int]]]:
    """The run's held-out queries per language and every English candidate (its seeds/eval.parquet)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(run_dir, "seeds", "eval.parquet")).to_pylist()
    queries: dict[str, tuple[list[str], list[int]]] = {}
    english: tuple[list[str], list[int]] = ([], [])
    for r in rows:
        if r["lang"] == PIVOT:
            english[0].append(r["text"])
            english[1].append(r["unit"])
        elif r["held_out"]:
            texts, units = queries.setdefault(r["lang"], ([], []))
            texts.append(r["text"])
            units.append(r["unit"])
    return queries, english


def scores(encoder, queries: dict, english: tuple) -> dict[str, float]:
    """Macro averages over languages and both directions: acc@1 and nDCG@10, in points (x100)."""
    from pipeline.evaluation.metrics import rank_scores

    eng_vecs = encoder.encode(english[0], batch_size=32)
    hit1, ndcg = [], []
    for texts, units in queries.values():
        vecs = encoder.encode(texts, batch_size=32)
        for s in (rank_scores(vecs, units, eng_vecs, english[1]), rank_scores(eng_vecs, english[1], vecs, units)):
            hit1.append(s["hit1"].mean())
            ndcg.append(s["ndcg"].mean())
    return {"acc@1": 100 * float(np.mean(hit1)), "ndcg@10": 100 * float(np.mean(ndcg))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled:multilingual-e5-small", help="model folder, hub id or bundled:NAME")
    parser.add_argument("--langs", nargs="+", default=LANGS, help="UDHR languages (ISO 639-3) for the default task")
    parser.add_argument("--run", help="a run directory: its trained encoder(s) on its own held-out split")
    parser.add_argument("--paths", nargs="+", default=["torch-none", "torch-int8", "onnx-int8", "openvino-int8"],
                        help="serving paths as <backend>-<quantize>; the first is the baseline")
    parser.add_argument("--cache-dir", default="~/.cache/bootembed")
    args = parser.parse_args()

    import torch

    from pipeline.layout import models_of_run
    from pipeline.models import resolve_model
    from serve._backends import load
    from serve.args import AppArgs

    torch.set_num_threads(1)
    if args.run:
        models, (queries, english) = models_of_run(args.run), run_items(args.run)
        task = f"held-out split of {args.run} ({sum(len(t) for t, _ in queries.values())} queries)"
    else:
        models = {args.model: resolve_model(args.model, os.path.expanduser(args.cache_dir))}
        queries, english = udhr_items(args.langs)
        task = f"bundled UDHR, {len(args.langs)} languages <-> English ({sum(len(t) for t, _ in queries.values())} paragraphs)"
    load_before, started = os.getloadavg()[0], time.monotonic()
    lines = ["| model | path | acc@1 | nDCG@10 | Δ acc@1 | Δ nDCG@10 |", "|---|---|---|---|---|---|"]
    for name, path in models.items():
        results = {}
        for variant in args.paths:
            backend, quantize = variant.split("-")
            encoder = load(path, backend, quantize, "cpu", threads=1, streams=1,
                           export_dir=AppArgs.model_fields["export_dir"].default)
            results[variant] = scores(encoder, queries, english)
            base = results[args.paths[0]]
            r = results[variant]
            lines.append(f"| {name} | {encoder.name} | {r['acc@1']:.2f} | {r['ndcg@10']:.2f} | "
                         f"{r['acc@1'] - base['acc@1']:+.2f} | {r['ndcg@10'] - base['ndcg@10']:+.2f} |")
            print(lines[-1], flush=True)
    print(f"\n{task}; x -> eng and eng -> x, macro average, points; load average {load_before:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after; {time.monotonic() - started:.0f}s\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
