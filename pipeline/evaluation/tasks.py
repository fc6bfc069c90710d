"""The evaluation tasks: what each measures (title, metrics, description), which run, and the data each runs on.

Retrieval on the held-out UDHR text always runs (its data is the seeds stage's eval.parquet). The other tasks run when
configured (`evaluate.tasks`), and a task on your files whenever `evaluate.sts / parallel / query_docs` name files.
`prepare_tasks` reads every task's model-independent data once, before any model is loaded.
"""

from __future__ import annotations

import itertools

from pipeline.config import RunConfig
from pipeline.evaluation import Skipped, readers

# metric name in the report -> per-item vector key, or `=key` for a corpus-level float (no bootstrap interval)
RETRIEVAL_METRICS = {"x->eng acc@1": "hit1_to", "eng->x acc@1": "hit1_from", "x->eng MRR@10": "rr_to", "eng->x MRR@10": "rr_from",
                     "x->eng nDCG@10": "ndcg_to", "eng->x nDCG@10": "ndcg_from", "x->eng F1": "=f1_to", "eng->x F1": "=f1_from"}
QUERY_DOC_METRICS = {"acc@1": "hit1", "MRR@10": "rr", "nDCG@10": "ndcg"}
BLI_METRICS = {"P@1": "hit1", "P@5": "hit5"}
CLASSIFICATION_METRICS = {"accuracy": "correct", "macro-F1": "=macro_f1"}
STS_METRICS = {"Spearman": "=spearman", "Pearson": "=pearson"}
TASK_METRICS = {"retrieval": RETRIEVAL_METRICS, "parallel": RETRIEVAL_METRICS, "query_docs": QUERY_DOC_METRICS,
                "bli": BLI_METRICS, "classification": CLASSIFICATION_METRICS, "sts": STS_METRICS}
PRIMARY_METRIC = {"retrieval": "x->eng acc@1", "parallel": "x->eng acc@1", "query_docs": "nDCG@10", "bli": "P@1",
                  "classification": "accuracy", "sts": "Spearman"}
MTEB_NOTE = ("nDCG@10 (MTEB's retrieval main score) counts every right candidate in the top 10, discounted by "
             "log2(rank + 1); F1 is MTEB's bitext-mining main score (weighted F1 of the top-1 match, a corpus-level "
             "number without an interval). ")
TASK_DESCRIPTIONS = {
    "retrieval": "Bitext retrieval on held-out UDHR paragraphs: a query paragraph retrieves its translation among every "
                 "paragraph of the other language (cosine). `x->eng` retrieves the English translation of a "
                 "target-language paragraph, `eng->x` the reverse; acc@1 = right one first, MRR@10 = mean reciprocal "
                 "rank of the right one (0 beyond rank 10). " + MTEB_NOTE + "The pool is larger than the queries, "
                 "unlike MTEB's bitext data, so compare F1 with MTEB tables by definition, not by value. n = queries.",
    "parallel": "Cross-lingual retrieval on your parallel text (evaluate.parallel): every sentence of the file retrieves "
                "its translation among every sentence of the other language in the file (cosine), `x->eng` and `eng->x`; "
                "acc@1, MRR@10 as above. " + MTEB_NOTE + "Query and pool are the file's pairs, as in MTEB's bitext "
                "mining readers. n = sentence pairs.",
    "query_docs": "Within-language retrieval on your queries and documents (evaluate.query_docs): each query ranks every "
                  "document of the file (cosine); acc@1 = a relevant document first, MRR@10 = reciprocal rank of the "
                  "first relevant one, nDCG@10 = MTEB's retrieval main score (every relevant document in the top 10, "
                  "discounted by log2(rank + 1)). n = queries.",
    "bli": "Bilingual lexicon induction: each target-language word of a dictionary retrieves its nearest English word "
           "(cosine of word embeddings) among every English word of that dictionary; P@k = a dictionary translation "
           "is among the k nearest. n = query words; the source column names the dictionary.",
    "classification": "Topic classification, zero-shot transfer: a logistic-regression probe on frozen embeddings is "
                      "trained on English CLDR emoji short names labelled by emoji group (8 topics: smileys, people, "
                      "animals & nature, food, travel & places, activities, objects, symbols) and tested on the "
                      "target-language short names. n = test texts.",
    "sts": "Semantic textual similarity (the paper's measure, as in SemRel 2024 / MTEB STS): Spearman and Pearson "
           "correlation between the cosine similarity of each scored sentence pair and its gold score (your files in "
           "evaluate.sts). n = pairs; a correlation has no per-item bootstrap interval.",
}
TASK_TITLES = {"retrieval": "Bitext retrieval", "parallel": "Cross-lingual retrieval (your parallel text)",
               "query_docs": "Within-language retrieval (your queries and documents)", "bli": "Bilingual lexicon induction",
               "classification": "Topic classification", "sts": "Semantic textual similarity"}
# tasks that read the user's files: task -> (evaluate field naming them per language, what the file is, an example)
USER_FILE_TASKS = {"sts": ("sts", "STS", "pairs.tsv"), "parallel": ("parallel", "parallel text", "[sentences.txt, english.txt]"),
                   "query_docs": ("query_docs", "query/document", "pairs.tsv")}


def active_tasks(cfg: RunConfig) -> list[str]:
    """The configured tasks beside retrieval; a task on user files also runs whenever its files are given."""
    given = [t for t, (field, _, _) in USER_FILE_TASKS.items() if getattr(cfg.evaluate, field) and t not in cfg.evaluate.tasks]
    return [*cfg.evaluate.tasks, *given]


def user_file(cfg: RunConfig, task: str, lang: str):
    """The file(s) the user gave `task` for `lang`; Skipped naming the config field when there are none."""
    field, what, example = USER_FILE_TASKS[task]
    files = getattr(cfg.evaluate, field)
    if lang not in files:
        raise Skipped(f"no {what} file for {lang} (evaluate.{field}: {{{lang}: {example}}})")
    return files[lang]


def classification_data(cfg: RunConfig, lang: str) -> tuple:
    """(train texts, train labels, test texts, test labels) of the topic probe for `lang`."""
    ev = cfg.evaluate
    items = readers.classification_items(lang, ev.classification_source, ev.classification_max_test, cfg.seed,
                                         ev.classification_max_train)
    if len(set(items[1])) < 2:
        raise Skipped(f"label set has one class ({items[1][0]}): nothing to classify")
    return items


def bli_data(cfg: RunConfig, lang: str) -> tuple:
    """(query words, English vocabulary, gold sets, the dictionary's name) of BLI for `lang`."""
    pairs, source = readers.load_dictionary(lang, cfg.evaluate.dictionaries, cfg.evaluate.bli_cldr_fallback)
    return (*readers.bli_items(pairs, cfg.evaluate.bli_max_words, cfg.seed), source)


TASK_DATA = {  # task -> (cfg, lang) -> the task's model-independent data; raises Skipped with the reason
    "sts": lambda cfg, lang: readers.read_sts(user_file(cfg, "sts", lang)),
    "parallel": lambda cfg, lang: readers.read_parallel(lang, user_file(cfg, "parallel", lang)),
    "query_docs": lambda cfg, lang: readers.read_query_docs(user_file(cfg, "query_docs", lang)),
    "bli": bli_data,
    "classification": classification_data,
}


def prepare_tasks(cfg: RunConfig, langs: list[str]) -> tuple[dict, dict]:
    """Model-independent task data: (task -> lang -> data, task -> lang -> skipped reason).

    A malformed user file (misaligned, a missing column, a bad row) raises ValueError naming file and line, before
    any model is loaded; a missing file or too little data is a skipped row in the report.
    """
    data: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    skipped: dict[str, dict] = {t: {} for t in active_tasks(cfg)}
    for task, lang in itertools.product(data, langs):
        try:
            data[task][lang] = TASK_DATA[task](cfg, lang)
        except Skipped as e:
            skipped[task][lang] = str(e)
    return data, skipped


def check_user_files(cfg: RunConfig) -> None:
    """Read every evaluation file the user named (STS, parallel, query/document pairs), so a malformed one fails a run
    before its first stage rather than after hours of synthesis and training."""
    for task in USER_FILE_TASKS:
        if task in active_tasks(cfg):
            for lang in cfg.languages:
                try:
                    TASK_DATA[task](cfg, lang)
                except Skipped:
                    pass  # missing or too little data: a "skipped" row in the report, not an error
