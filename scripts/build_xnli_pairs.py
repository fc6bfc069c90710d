"""Rebuild pipeline/corpus/xnli_pairs.parquet from the XL-LoRA paper's cross-lingual NLI pairs.

Source: xnli14_cross_lingual_pos.csv (sent0, sent1) and xnli14_cross_lingual_neg.csv
(sent0, hard_neg) of Basoz et al. 2026 (github.com/mbasoz/xllora-embedding, commit ae84504),
derived from XNLI (CC BY-NC 4.0). Usage: python scripts/build_xnli_pairs.py [SOURCE_DIR]
"""

import csv
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
FILES = {"positive": ("xnli14_cross_lingual_pos.csv", "sent1"), "negative": ("xnli14_cross_lingual_neg.csv", "hard_neg")}


def read_pairs(source: Path) -> list[dict]:
    rows = []
    for role, (name, column) in FILES.items():
        with (source / name).open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                rows.append({"role": role, "pair": i, "anchor": row["sent0"].strip(), "output": row[column].strip()})
    return rows


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "xllora"
    table = pa.Table.from_pylist(read_pairs(source))
    pq.write_table(table, ROOT / "pipeline" / "corpus" / "xnli_pairs.parquet", compression="zstd", compression_level=19)
    print(f"wrote {table.num_rows} pairs")


if __name__ == "__main__":
    main()
