"""A tiny data directory in the layout of ../shared/data (CMRC 2018, MMLU, GSM8K), written by
the tests themselves so that no test needs the shared datasets."""

from __future__ import annotations

import json
from pathlib import Path

CMRC_ARTICLES = [
    ("《战国无双3》是由光荣和ω-force开发的游戏。", [("开发者是谁？", ["光荣和ω-force", "光荣"]), ("这是什么？", ["游戏"])]),
    ("北京是中国的首都，人口众多。", [("中国的首都是哪里？", ["北京"]), ("北京人口多吗？", ["人口众多"])]),
    ("长江是中国最长的河流。", [("中国最长的河流是什么？", ["长江"])]),
    ("熊猫生活在四川的山区。", [("熊猫生活在哪里？", ["四川的山区", "四川"])]),
]
MMLU_SUBJECTS = ["astronomy", "anatomy", "virology"]
GSM8K_ROWS = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = 5\n#### 5"),
    ("A box holds 12 pens. How many pens are in 3 boxes?", "12 * 3 = 36\n#### 36"),
    ("Sara had 1,000 dollars and spent 250. How much is left?", "1000 - 250 = 750\n#### 750"),
    ("There are 7 days in a week. How many days are in 2 weeks?", "7 * 2 = 14\n#### 14"),
    ("A cake is cut into 8 pieces and 3 are eaten. How many remain?", "8 - 3 = 5\n#### 5"),
    ("Each of 4 friends has 6 marbles. How many marbles in total?", "4 * 6 = 24\n#### 24"),
]


def write_general_data_dir(root: Path) -> Path:
    squad = {"version": "v1.0", "data": []}
    for a, (context, qas) in enumerate(CMRC_ARTICLES):
        squad["data"].append({
            "paragraphs": [{
                "id": f"DEV_{a}",
                "context": context,
                "qas": [
                    {"question": q, "id": f"DEV_{a}_QUERY_{k}",
                     "answers": [{"text": t, "answer_start": max(0, context.find(t))} for t in answers]}
                    for k, (q, answers) in enumerate(qas)
                ],
            }],
            "id": f"DEV_{a}",
        })
    (root / "cmrc2018_dev").mkdir(parents=True)
    (root / "cmrc2018_dev" / "cmrc2018_dev.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")

    (root / "mmlu_test").mkdir()
    lines = [json.dumps({"question": "question", "answer_a": "A", "answer_b": "B", "answer_c": "C",
                         "answer_d": "D", "correct_answer": "answer", "topic": "topic"})]  # a stray header row
    for i in range(9):
        lines.append(json.dumps({
            "question": f"Question {i} about {MMLU_SUBJECTS[i % 3]}?",
            "answer_a": f"a{i}", "answer_b": f"b{i}", "answer_c": f"c{i}", "answer_d": f"d{i}",
            "correct_answer": "ABCD"[i % 4], "topic": MMLU_SUBJECTS[i % 3],
        }))
    (root / "mmlu_test" / "mmlu_test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (root / "gsm8k_test").mkdir()
    (root / "gsm8k_test" / "test.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K_ROWS), encoding="utf-8"
    )
    return root
