"""Regenerate tests/assets/formats: the same three conversations in every supported format.

Run: python tests/assets/make_format_assets.py
"""

import csv
import gzip
import json
from pathlib import Path

OUT = Path(__file__).parent / "formats"
PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What does tunelab do?", "It fine-tunes language models."),
    ("Is the quick brown fox lazy?", "No, the dog is lazy."),
]


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    plain = [{"question": q, "answer": a} for q, a in PAIRS]
    write_jsonl(OUT / "plain.jsonl", plain)
    with open(OUT / "plain.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(plain)
    with open(OUT / "plain.tsv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer"], delimiter="\t", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(plain)
    (OUT / "plain.json").write_text(json.dumps(plain, indent=1), encoding="utf-8")
    with gzip.open(OUT / "plain.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in plain))
    (OUT / "alpaca.json").write_text(
        json.dumps([{"instruction": q, "input": "", "output": a} for q, a in PAIRS], indent=1), encoding="utf-8"
    )
    write_jsonl(
        OUT / "messages.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS],
    )
    (OUT / "sharegpt.json").write_text(
        json.dumps(
            [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in PAIRS],
            indent=1,
        ),
        encoding="utf-8",
    )
    # Multi-turn: one conversation of three turns, as messages and as H2O rows chained by parent_id.
    write_jsonl(
        OUT / "multiturn_messages.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    *[
                        m
                        for q, a in PAIRS
                        for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
                    ],
                ]
            }
        ],
    )
    with open(OUT / "h2o_multiturn.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "parent_id", "question", "answer"])
        writer.writeheader()
        for i, (q, a) in enumerate(PAIRS):
            writer.writerow({"id": f"t{i}", "parent_id": f"t{i - 1}" if i else "", "question": q, "answer": a})
    write_jsonl(
        OUT / "alpaca_history.jsonl",
        [
            {
                "instruction": PAIRS[2][0],
                "input": "",
                "output": PAIRS[2][1],
                "system": "Be brief.",
                "history": [list(p) for p in PAIRS[:2]],
            }
        ],
    )
    (OUT / "text.txt").write_text("".join(f"{q} {a}\n" for q, a in PAIRS), encoding="utf-8")
    write_jsonl(OUT / "preference.jsonl", [{"prompt": q, "chosen": a, "rejected": "I don't know."} for q, a in PAIRS])
    write_jsonl(
        OUT / "preference_messages.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": "I don't know."}],
            }
            for q, a in PAIRS
        ],
    )
    write_jsonl(
        OUT / "preference_hh.jsonl",
        [
            {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: I don't know."}
            for q, a in PAIRS
        ],
    )
    with open(OUT / "classification.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["title", "body", "label"])
        for i in range(12):
            writer.writerow([f"title {i}", "great movie" if i % 3 else "terrible movie", ["neg", "pos", "pos"][i % 3]])
    write_jsonl(
        OUT / "multilabel.jsonl", [{"text": f"row {i}", "label": [["a"], ["b"], ["a", "b"]][i % 3]} for i in range(9)]
    )
    with open(OUT / "multilabel.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(9):
            writer.writerow([f"row {i}", ["a", "b", "a;b"][i % 3]])


if __name__ == "__main__":
    main()
