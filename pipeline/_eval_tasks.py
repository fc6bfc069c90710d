"""Evaluation tasks beside bitext retrieval: metrics (pure numpy / sklearn), data and summaries.

- ranking: acc@1, MRR@10 and nDCG@10 per query (`ranking_scores`, `rank_scores`), and MTEB's
  BitextMining main score, a support-weighted F1 of the top-1 match (`bitext_f1`);
- user files: parallel text (`read_parallel`), query/document pairs (`read_query_docs`), STS pairs (`read_sts`);
- confidence: stratified bootstrap 95% intervals of a macro average over languages, and
  paired intervals of a model's difference to the base (`bootstrap_mean_ci`, `bootstrap_delta_ci`);
- bilingual lexicon induction (`bli_scores`): nearest English word of a target word among
  every English word of the dictionary, P@1 / P@5;
- topic classification (`probe_scores`): logistic-regression probe on frozen embeddings,
  trained on English, tested on the target language, accuracy / macro-F1.

A task result is `{"per_language": {lang: {model: scores} | {"skipped": reason}},
"average": {model: scores}, ...}`; per-item score vectors are kept apart (never in JSON).
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline._dictd import DictionaryError, read_dictd, read_dictionary, single_word
from pipeline import _stats, records
from pipeline.records import read_records
from pipeline.seeds import PIVOT

BUNDLED_DICTIONARIES = {"kha": "kha-eng", "swh": "swh-eng"}  # pipeline/corpus/freedict/<pair>.index/.dict.dz


class Skipped(Exception):
    """A task cannot run for one language; the message is the reason shown in the report."""


# ---------------------------------------------------------------- ranking and intervals

def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranking_scores(sims: np.ndarray, relevant: list[set[int]], k: int = 10) -> dict:
    """Per query (a row of sims [nq, nc]): hit@1, reciprocal rank of the first relevant candidate and nDCG@k, each 0
    when no relevant candidate is in the top k; `top` = the best candidate's index.

    nDCG uses binary gains (a relevant candidate counts 1) and the log2(rank + 1) discount, as pytrec_eval computes
    MTEB's retrieval main score; the ideal ranking puts every relevant candidate first. Ties keep candidate order.
    """
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # [nq, min(k, nc)]
    gains = np.zeros(order.shape)  # [nq, min(k, nc)]: 1 where the candidate at that rank is relevant
    for i, rel in enumerate(relevant):
        gains[i] = np.isin(order[i], list(rel))
    first = np.where(gains.any(axis=1), gains.argmax(axis=1), -1)  # [nq]
    discount = 1.0 / np.log2(np.arange(2, order.shape[1] + 2))  # [min(k, nc)]
    ideal = np.array([discount[:len(rel)].sum() for rel in relevant])  # [nq]
    return {"hit1": (first == 0).astype(float),
            "rr": np.where(first >= 0, 1.0 / np.maximum(first + 1, 1), 0.0),
            "ndcg": np.divide(gains @ discount, ideal, out=np.zeros(len(order)), where=ideal > 0),
            "top": order[:, 0] if order.shape[1] else np.zeros(len(order), dtype=int)}


def rank_scores(queries: np.ndarray, query_ids: list, candidates: np.ndarray, candidate_ids: list, k: int = 10) -> dict:
    """`ranking_scores` by cosine, a candidate being relevant to a query when it carries the query's id; `top_id` = the
    best candidate's id."""
    by_id: dict = {}
    for j, c in enumerate(candidate_ids):
        by_id.setdefault(c, set()).add(j)
    sims = _normalise(queries) @ _normalise(candidates).T  # [nq, nc]
    scores = ranking_scores(sims, [by_id.get(q, set()) for q in query_ids], k)
    return {**scores, "top_id": [candidate_ids[j] for j in scores["top"]]}


def bitext_f1(gold: list, predicted: list) -> float:
    """MTEB's BitextMining main score: sklearn's f1_score(gold, predicted, average="weighted").

    Per gold label c: F1_c = 2 * (queries of c predicted c) / (queries of c + predictions of c); the average weights
    each label by its number of queries. With one query per label (MTEB's bitext data) it is the share of queries
    matched right, each discounted by how many other queries took the same match.
    """
    if not gold:
        return 0.0  # no queries: the caller reports the language as skipped
    support, predictions = Counter(gold), Counter(predicted)
    right = Counter(g for g, p in zip(gold, predicted) if g == p)
    return float(sum(2 * right[c] / (support[c] + predictions[c]) * support[c] for c in support) / len(gold))


def bitext_direction(queries: np.ndarray, query_ids: list, pool: np.ndarray, pool_ids: list) -> dict:
    """One retrieval direction of a bitext task: per-query hit1 / rr / ndcg, and the direction's MTEB F1."""
    s = rank_scores(queries, query_ids, pool, pool_ids)
    return {"hit1": s["hit1"], "rr": s["rr"], "ndcg": s["ndcg"], "f1": bitext_f1(list(query_ids), s["top_id"])}


def both_directions(to_eng: dict, from_eng: dict) -> dict:
    """{hit1_to, rr_to, ndcg_to, f1_to, hit1_from, ...}: the item keys the retrieval tables read."""
    return {f"{k}_to": v for k, v in to_eng.items()} | {f"{k}_from": v for k, v in from_eng.items()}


def _resample(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(samples, n))


def bootstrap_mean_ci(per_lang: list[np.ndarray], samples: int = 1000, level: float = 0.95, seed: int = 0) -> list[float] | None:
    """Interval of the mean over languages of per-language means, items resampled within each language."""
    per_lang = [np.asarray(v, dtype=float) for v in per_lang if len(v)]
    if not per_lang or samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.mean([v[_resample(len(v), samples, rng)].mean(axis=1) for v in per_lang], axis=0)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def bootstrap_delta_ci(model: list[np.ndarray], base: list[np.ndarray], samples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> list[float] | None:
    """Paired interval of (model - base) on the same resampled items (the items are the same queries)."""
    pairs = [(np.asarray(a, float), np.asarray(b, float)) for a, b in zip(model, base) if len(a)]
    if not pairs or samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for a, b in pairs:
        idx = _resample(len(a), samples, rng)
        stats.append(a[idx].mean(axis=1) - b[idx].mean(axis=1))
    lo, hi = np.quantile(np.mean(stats, axis=0), [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------- bilingual lexicon induction

def bundled_dictionary_path(lang: str) -> str | None:
    """The bundled FreeDict subset of `lang` (a dictd prefix), or None. A distribution may leave the GPL-licensed
    freedict/ folder out (see NOTICE.freedict): then there is none."""
    pair = BUNDLED_DICTIONARIES.get(lang)
    if pair is None:
        return None
    folder = resources.files("pipeline.corpus").joinpath("freedict")
    return str(folder.joinpath(pair)) if folder.joinpath(pair + ".index").is_file() else None


def cldr_word_pairs(lang: str) -> dict[str, set[str]]:
    """One-word CLDR short names of the same emoji in `lang` and English (`sw` 'simba' -> 'lion')."""
    table = emoji_topics()
    by_emoji: dict[str, dict[str, str]] = {}
    for r in table:
        if r["lang"] in (lang, "eng"):
            by_emoji.setdefault(r["emoji"], {})[r["lang"]] = r["text"]
    pairs: dict[str, set[str]] = {}
    for names in by_emoji.values():
        src, eng = single_word(names.get(lang, "")), single_word(names.get("eng", ""))
        if src and eng and not (lang != "eng" and src == eng):  # an untranslated English name is no evidence
            pairs.setdefault(src, set()).add(eng)
    return pairs


def load_dictionary(lang: str, user_paths: dict[str, str], cldr_fallback: bool) -> tuple[dict[str, set[str]], str]:
    """(pairs, source name); raises Skipped with the reason when there is none."""
    if lang in user_paths:
        try:
            return read_dictionary(user_paths[lang]), user_paths[lang]
        except DictionaryError as e:
            raise Skipped(str(e)) from e
    if (path := bundled_dictionary_path(lang)) is not None:
        return read_dictd(path), f"FreeDict {BUNDLED_DICTIONARIES[lang]} (subset)"
    if cldr_fallback:
        pairs = cldr_word_pairs(lang)
        if pairs:
            return pairs, "CLDR emoji short names"
    raise Skipped(f"no dictionary for {lang}")


def bli_items(pairs: dict[str, set[str]], max_words: int, seed: int = 0) -> tuple[list[str], list[str], list[set[str]]]:
    """(query words, English vocabulary = every English word of the dictionary, gold sets per query)."""
    pairs = {s: t for s, t in pairs.items() if t}
    if not pairs:
        raise Skipped("dictionary has no single-word pairs")
    eng = sorted({w for ts in pairs.values() for w in ts})
    if len(eng) < 2:
        raise Skipped("dictionary has fewer than 2 English words")
    src = sorted(pairs)
    if max_words and len(src) > max_words:
        src = sorted(np.random.default_rng(seed).choice(src, size=max_words, replace=False).tolist())
    return src, eng, [pairs[s] for s in src]


def bli_scores(src_vecs: np.ndarray, eng_vecs: np.ndarray, eng_words: list[str], gold: list[set[str]]) -> dict:
    """Per query word: is a gold English word the nearest (P@1) / among the 5 nearest (P@5)?"""
    eng_index = {w: i for i, w in enumerate(eng_words)}
    if not any(w in eng_index for g in gold for w in g):
        raise Skipped("no overlap between the dictionary's English words and the vocabulary")
    sims = _normalise(src_vecs) @ _normalise(eng_vecs).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    words = np.asarray(eng_words, dtype=object)[top]
    hit1 = np.array([w[0] in g for w, g in zip(words, gold)], dtype=float)
    hit5 = np.array([any(x in g for x in w) for w, g in zip(words, gold)], dtype=float)
    return {"hit1": hit1, "hit5": hit5}


# ---------------------------------------------------------------- topic classification

_EMOJI: list[dict] | None = None


def emoji_topics() -> list[dict]:
    """Rows {lang, emoji, text, label} of pipeline/corpus/emoji_topics.parquet (CLDR short names by emoji group)."""
    global _EMOJI
    if _EMOJI is None:
        with resources.files("pipeline.corpus").joinpath("emoji_topics.parquet").open("rb") as f:
            _EMOJI = pq.read_table(f).to_pylist()
    return _EMOJI


def _sample(rows: list, most: int, seed: int) -> list:
    if not most or len(rows) <= most:
        return rows
    keep = np.random.default_rng(seed).choice(len(rows), size=most, replace=False)
    return [rows[i] for i in sorted(keep)]


def classification_items(lang: str, source: str, max_test: int, seed: int = 0,
                         max_train: int = 0) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, test texts, test labels): source-language rows train, `lang` rows test."""
    rows = emoji_topics()
    train = [r for r in rows if r["lang"] == source]
    test = [r for r in rows if r["lang"] == lang]
    if not test:
        raise Skipped(f"no labelled texts for {lang}")
    if not train:
        raise Skipped(f"no labelled texts for the source language {source}")
    train, test = _sample(train, max_train, seed), _sample(test, max_test, seed)
    return [r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test], [r["label"] for r in test]


def macro_f1(y_true: list, y_pred: list) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    scores = []
    for c in sorted(set(y_true.tolist()) | set(y_pred.tolist()), key=str):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp, fn = np.sum((y_pred == c) & (y_true != c)), np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def fit_probe(x_train: np.ndarray, y_train: list, seed: int = 0):
    """Multinomial logistic regression on L2-normalised frozen embeddings (raises Skipped for < 2 classes)."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(y_train))
    if len(classes) < 2:
        raise Skipped(f"label set has one class ({classes[0] if classes else 'none'}): nothing to classify")
    return LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(_normalise(x_train), list(y_train))


def probe_scores(x_train: np.ndarray | None, y_train: list, x_test: np.ndarray, y_test: list, seed: int = 0, clf=None) -> dict:
    """Accuracy (per item) and macro-F1 of a probe on the test set; `clf` reuses a probe fitted on the same training set."""
    clf = clf if clf is not None else fit_probe(x_train, y_train, seed)
    unseen = set(y_test) - set(clf.classes_)
    if unseen:
        raise Skipped(f"test labels missing from training: {sorted(unseen)}")
    pred = clf.predict(_normalise(x_test)).tolist()
    correct = np.array([p == t for p, t in zip(pred, y_test)], dtype=float)
    return {"correct": correct, "macro_f1": macro_f1(list(y_test), pred)}


# ---------------------------------------------------------------- user files

def read_table(path: str, columns: tuple[str, ...], what: str) -> list[dict]:
    """Rows (each with its `line`) of a user csv / tsv / jsonl / parquet file that has `columns`.

    Raises Skipped when the file does not exist (the report shows why the language has no score) and ValueError
    naming the file when a column is missing.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise Skipped(f"{what} file {path} does not exist")
    records = read_records(p)
    missing = [c for c in columns if records and c not in records[0]]
    if missing:
        found = sorted(k for k in records[0] if k not in ("line", None))
        raise ValueError(f"{path}: no column {', '.join(missing)} (needs {', '.join(columns)}; the file has {', '.join(found)})")
    return records


def _cell(row: dict, column: str) -> str:
    """A field as stripped text; a missing or null field is empty."""
    value = row.get(column)
    return "" if value is None else str(value).strip()


def aligned_text_files(target: str, english: str) -> list[tuple[str, str]]:
    """records.aligned_text_files; a file that does not exist is a skipped language, not an error."""
    try:
        return records.aligned_text_files(target, english)
    except FileNotFoundError as e:
        raise Skipped(f"parallel file {e}") from None


def parallel_table(path: str, lang: str) -> list[tuple[str, str]]:
    """(sentence, English translation) pairs of a table with columns `<lang>` and `eng`; a row blank in both is left out."""
    pairs = []
    for r in read_table(path, (lang, PIVOT), "parallel"):
        s, e = _cell(r, lang), _cell(r, PIVOT)
        if s and e:
            pairs.append((s, e))
        elif s or e:
            empty, full = (lang, PIVOT) if not s else (PIVOT, lang)
            raise ValueError(f"{path}:{r['line']}: field {empty!r} is empty but {full!r} is not; each sentence needs its translation")
    return pairs


def read_parallel(lang: str, source: str | list[str]) -> tuple[list[str], list[str]]:
    """(sentences, English translations) of `evaluate.parallel.<lang>`: one table, or two aligned text files."""
    pairs = parallel_table(source, lang) if isinstance(source, str) else aligned_text_files(*source)
    if len(pairs) < 2:
        raise Skipped(f"{len(pairs)} sentence pair(s) in {source}; retrieval needs at least 2")
    return [s for s, _ in pairs], [e for _, e in pairs]


def parallel_items(src_vecs: np.ndarray, eng_vecs: np.ndarray, src: list[str], eng: list[str]) -> dict:
    """Both directions over one parallel file: each sentence retrieves its translation among every distinct sentence of
    the other language in the file. A sentence that occurs twice is one candidate, right for both its partners."""
    def pool(vecs: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        first: dict[str, int] = {}  # text -> its first row, in file order
        for i, t in enumerate(texts):
            first.setdefault(t, i)
        return vecs[list(first.values())], list(first)

    return both_directions(bitext_direction(src_vecs, eng, *pool(eng_vecs, eng)),
                           bitext_direction(eng_vecs, src, *pool(src_vecs, src)))


QUERY_DOC_COLUMNS = ("query", "document")


def read_query_docs(path: str) -> tuple[list[str], list[str], list[set[int]]]:
    """(queries, documents, indices of each query's relevant documents) of a file with query, document [, doc_id] columns.

    A row pairs a query with one relevant document; a query on several rows has several. A row without a query adds
    its document to the pool only (a distractor). Rows with the same doc_id are one document, whose text need be given
    only once; without doc_id a document is its text. The pool is every document of the file, in file order.
    """
    rows = read_table(path, QUERY_DOC_COLUMNS, "query/document")
    texts: dict[str, str] = {}  # document key (doc_id, else its text) -> text
    first_line: dict[str, int] = {}
    relevant: dict[str, set[str]] = {}  # query -> keys of its relevant documents
    for r in rows:
        query, text, doc_id = _cell(r, "query"), _cell(r, "document"), _cell(r, "doc_id")
        key = doc_id or text
        if not key:
            raise ValueError(f"{path}:{r['line']}: field 'document' is empty" + (" and so is 'doc_id'" if "doc_id" in r else ""))
        if text and texts.get(key) and texts[key] != text:
            raise ValueError(f"{path}:{r['line']}: doc_id {doc_id!r} has another document text on line {first_line[key]}")
        first_line.setdefault(key, r["line"])
        texts[key] = texts.get(key) or text
        if query:
            relevant.setdefault(query, set()).add(key)
    textless = [k for k, t in texts.items() if not t]
    if textless:
        raise ValueError(f"{path}:{first_line[textless[0]]}: doc_id {textless[0]!r} has no document text on any line")
    if not relevant:
        raise Skipped(f"no row of {path} has a query")
    if len(texts) < 2:
        raise Skipped(f"{path} has one document; ranking needs at least 2")
    index = {k: i for i, k in enumerate(texts)}
    return list(relevant), list(texts.values()), [{index[k] for k in keys} for keys in relevant.values()]


def query_doc_items(query_vecs: np.ndarray, doc_vecs: np.ndarray, relevant: list[set[int]]) -> dict:
    """Per query: hit1, rr, ndcg of its relevant documents among every document (cosine)."""
    return ranking_scores(_normalise(query_vecs) @ _normalise(doc_vecs).T, relevant)


STS_COLUMNS = ("sentence1", "sentence2", "score")


def read_sts(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences 1, sentences 2, gold scores) from a csv / tsv / jsonl / parquet file; bad rows are named by line."""
    s1, s2, gold = [], [], []
    for r in read_table(path, STS_COLUMNS, "STS"):
        n = r["line"]
        if not _cell(r, "sentence1") or not _cell(r, "sentence2"):
            raise ValueError(f"{path}:{n}: sentence1 and sentence2 must both be non-empty")
        try:
            score = float(r.get("score"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{n}: score {r.get('score')!r} is not a number") from None
        if not np.isfinite(score):
            raise ValueError(f"{path}:{n}: score {r.get('score')!r} is not a finite number")
        s1.append(str(r["sentence1"]))
        s2.append(str(r["sentence2"]))
        gold.append(score)
    return s1, s2, np.array(gold)


def sts_scores(vecs1: np.ndarray, vecs2: np.ndarray, gold: np.ndarray) -> dict:
    """Spearman (the paper's and MTEB's STS measure) and Pearson correlation of cosine similarity with the gold scores."""
    from scipy.stats import pearsonr, spearmanr

    if len(gold) < 3:
        raise Skipped(f"only {len(gold)} scored pair(s); a correlation needs at least 3")
    if np.ptp(gold) == 0:
        raise Skipped("every gold score is the same: a correlation is undefined")
    cos = (_normalise(vecs1) * _normalise(vecs2)).sum(1)
    if np.ptp(cos) == 0:
        return {"spearman": 0.0, "pearson": 0.0, "n": len(gold)}  # the model cannot tell the pairs apart
    return {"spearman": float(spearmanr(cos, gold).statistic), "pearson": float(pearsonr(cos, gold).statistic), "n": len(gold)}


# ---------------------------------------------------------------- summaries

def summarise(per_item: dict[str, dict[str, dict]], skipped: dict[str, str], metrics: dict[str, str], primary: str,
              models: list[str], samples: int, level: float = 0.95, seed: int = 0, extra: dict | None = None,
              reference: str | None = None) -> dict:
    """Task result from per-item vectors.

    per_item: lang -> model -> {metric: per-item array (a mean metric) or float (a corpus metric)}.
    metrics: metric -> vector key in per_item (a mean over items) or `=key` (a float, e.g. macro-F1).
    Every mean metric gets bootstrap intervals per language and on the average (the mean of the
    per-language means, items resampled within each language), and a paired interval of each
    model's difference to the first model, with a paired permutation p value (`delta_p`), the smallest difference
    the items can detect (`detectable`), and, when `reference` names one of the models (the parallel strategy, the
    upper bound), the share of its gain each other trained model closes (`gap_closed`). `primary` names the metric
    plots and "n" follow.
    """
    langs = list(per_item)
    vectors = {name: key for name, key in metrics.items() if not key.startswith("=")}
    out: dict = {"metrics": list(metrics), "primary": primary, "per_language": {}, "average": {}, "delta_ci": {},
                 "delta_p": {}, "detectable": {}, "gap_closed": {}, "gap_reference": reference if reference in models else None,
                 "confidence": level, "bootstrap_samples": samples}
    for lang in langs:
        out["per_language"][lang] = {}
        for m in models:
            item = per_item[lang][m]
            scores = {name: float(item[key[1:]]) if key.startswith("=") else float(np.mean(item[key]))
                      for name, key in metrics.items()}
            scores["n"] = int(item["n"]) if "n" in item else int(len(item[metrics[primary]]))
            scores["ci"] = {name: bootstrap_mean_ci([item[key]], samples, level, seed) for name, key in vectors.items()}
            if m != models[0]:
                scores["delta_ci"] = {name: bootstrap_delta_ci([item[key]], [per_item[lang][models[0]][key]], samples, level, seed)
                                      for name, key in vectors.items()}
                scores["delta_p"] = {name: _stats.paired_permutation_p([item[key]], [per_item[lang][models[0]][key]], samples, seed)
                                     for name, key in vectors.items()}
            out["per_language"][lang][m] = scores | (extra or {}).get(lang, {})
    for lang, reason in skipped.items():
        out["per_language"][lang] = {"skipped": reason}
    if langs:
        for m in models:
            avg = {name: float(np.mean([out["per_language"][l][m][name] for l in langs])) for name in metrics}
            avg["n"] = int(sum(out["per_language"][l][m]["n"] for l in langs))
            avg["languages"] = len(langs)
            avg["ci"] = {name: bootstrap_mean_ci([per_item[l][m][key] for l in langs], samples, level, seed)
                         for name, key in vectors.items()}
            out["average"][m] = avg
        column = lambda m, key: [per_item[l][m][key] for l in langs]  # noqa: E731 - one vector per language
        for m in models[1:]:
            out["delta_ci"][m] = {name: bootstrap_delta_ci(column(m, key), column(models[0], key), samples, level, seed)
                                  for name, key in vectors.items()}
            out["delta_p"][m] = {name: _stats.paired_permutation_p(column(m, key), column(models[0], key), samples, seed)
                                 for name, key in vectors.items()}
        out["detectable"] = {name: _stats.detectable_difference(
            [_stats.standard_error(column(m, key), column(models[0], key)) for m in models[1:]], column(models[0], key), level)
            for name, key in vectors.items()}
        if out["gap_reference"]:
            for m in models[1:]:
                if m != reference:
                    out["gap_closed"][m] = {name: _stats.bootstrap_ratio(column(m, key), column(reference, key),
                                                                         column(models[0], key), samples, level, seed)
                                            for name, key in vectors.items()}
    return out
