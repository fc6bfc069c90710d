"""The pieces of the `evaluate` stage (pipeline/evaluate.py), one job per module; none of them imports a stage.

- tasks: which tasks run and the model-independent data each runs on (its catalogue: titles, metrics, descriptions)
- readers: the task data's readers: your STS / parallel / query-document files, BLI dictionaries, CLDR emoji topics
- encoding: each model loaded once and every distinct text encoded once per model
- metrics: scores from vectors (ranking, bitext F1, BLI, the topic probe, STS), library-backed where one computes them
- summary: per-item scores -> per-language and average scores with bootstrap intervals (pipeline/_stats.py)
- lora: a train.lora run's adapters as one encoder per strategy, each language's adapter beside the full fine-tune
  of its data (metrics.json's lora_vs_full) and each adapter's own numbers (evaluate/adapters.json)
- report, report_html: report.md, and the same report as one self-contained HTML page (markdown-it-py)
- plots: retrieval.png and tasks.png (matplotlib)
"""


class Skipped(Exception):
    """A task cannot run for one language; the message is the reason shown in the report."""
