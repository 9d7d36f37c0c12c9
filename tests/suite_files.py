"""Small benchmark files in the real hub schemas (written by the tests, never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

MATH500 = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "...", "answer": "\\frac{3}{4}",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Simplify $\\sqrt{8}$.", "solution": "...", "answer": "2\\sqrt{2}", "subject": "Algebra", "level": 3,
     "unique_id": "test/algebra/2.json"},
    {"problem": "What is $3 \\cdot 4$?", "solution": "...", "answer": "12", "subject": "Prealgebra", "level": 1,
     "unique_id": "test/prealgebra/3.json"},
]
AIME24 = [{"id": 60, "problem": "Find the remainder when 2024 is divided by 1000.", "solution": "...", "answer": "24",
           "url": "https://example.invalid/aime", "year": "2024"},
          {"id": 61, "problem": "Compute 7 * 11.", "solution": "...", "answer": "77", "url": "", "year": "2024"}]
AIME25 = [{"question": "What is 100 - 1?", "answer": "99"}, {"question": "What is 2^5?", "answer": "32"}]
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples?",
          "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
         {"question": "A box holds 1,200 pens; 200 are sold. How many are left?",
          "answer": "1200 - 200 = <<1200-200=1000>>1000\n#### 1,000"}]


def write_all(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in (("math500", MATH500), ("aime24", AIME24), ("aime25", AIME25), ("gsm8k", GSM8K)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = path
    files["math500_csv"] = folder / "math500.csv"
    pd.DataFrame(MATH500).to_csv(files["math500_csv"], index=False)
    files["gsm8k_parquet"] = folder / "gsm8k.parquet"
    pd.DataFrame(GSM8K).to_parquet(files["gsm8k_parquet"])
    return files
