"""Writes tests/assets/shapes/: one small file per dataset shape users bring, each written from the documenting
project's own description of the format (TRL's dataset types, LLaMA-Factory's data/README, OpenAI's chat fine-tuning
guide, Axolotl's dataset formats). Twelve rows each; run again to regenerate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

OUT = Path(__file__).parent / "shapes"
N = 12
COLOURS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold", "brown", "cyan", "lime", "navy"]


def q(i: int) -> str:
    return f"What colour is item {i}?"


def a(i: int) -> str:
    return f"Item {i} is {COLOURS[i % len(COLOURS)]}."


def bad(i: int) -> str:
    return f"I do not know item {i}."


def jsonl(name: str, rows: list[dict]) -> None:
    (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def jsondoc(name: str, rows: list[dict]) -> None:
    (OUT / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def table(name: str, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    with open(OUT / name, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\r\n" if delimiter == "\t" else "\n")
        writer.writerow(header)
        writer.writerows(rows)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_colour",
        "description": "The colour of an item",
        "parameters": {"type": "object", "properties": {"item": {"type": "integer"}}, "required": ["item"]},
    },
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = range(N)
    # ---- TRL dataset types, standard and conversational
    jsonl("trl_language_modeling_standard.jsonl", [{"text": f"{q(i)} {a(i)}"} for i in rng])
    jsonl("trl_language_modeling_conversational.jsonl", [{"messages": [user(q(i)), assistant(a(i))]} for i in rng])
    jsonl("trl_prompt_only_standard.jsonl", [{"prompt": q(i)} for i in rng])
    jsonl("trl_prompt_only_conversational.jsonl", [{"prompt": [user(q(i))]} for i in rng])
    jsonl("trl_prompt_completion_standard.jsonl", [{"prompt": q(i), "completion": " " + a(i)} for i in rng])
    jsonl(
        "trl_prompt_completion_conversational.jsonl",
        [{"prompt": [user(q(i))], "completion": [assistant(a(i))]} for i in rng],
    )
    jsonl(
        "trl_preference_explicit_standard.jsonl",
        [{"prompt": q(i), "chosen": a(i), "rejected": bad(i)} for i in rng],
    )
    jsonl(
        "trl_preference_explicit_conversational.jsonl",
        [{"prompt": [user(q(i))], "chosen": [assistant(a(i))], "rejected": [assistant(bad(i))]} for i in rng],
    )
    # Implicit prompt: whole texts (or conversations) sharing a prefix, which becomes the prompt.
    jsonl(
        "trl_preference_implicit_standard.jsonl",
        [{"chosen": f"{q(i)} {a(i)}", "rejected": f"{q(i)} {bad(i)}"} for i in rng],
    )
    jsonl(
        "trl_preference_implicit_conversational.jsonl",
        [{"chosen": [user(q(i)), assistant(a(i))], "rejected": [user(q(i)), assistant(bad(i))]} for i in rng],
    )
    jsonl(
        "trl_unpaired_preference_standard.jsonl",
        [{"prompt": q(i), "completion": a(i) if i % 2 else bad(i), "label": bool(i % 2)} for i in rng],
    )
    jsonl(
        "trl_unpaired_preference_conversational.jsonl",
        [
            {"prompt": [user(q(i))], "completion": [assistant(a(i) if i % 2 else bad(i))], "label": bool(i % 2)}
            for i in rng
        ],
    )
    jsonl(
        "trl_stepwise_supervision.jsonl",
        [
            {
                "prompt": f"Which is larger, {i} or {i + 3}?",
                "completions": [f"{i + 3} - {i} = 3.", f"So {i + 3} is larger."],
                "labels": [True, bool(i % 3)],
            }
            for i in rng
        ],
    )
    # ---- LLaMA-Factory (data/README.md): alpaca, alpaca preference, sharegpt (+tools), sharegpt preference,
    # openai-style messages, KTO, raw text
    jsondoc(
        "llamafactory_alpaca.json",
        [
            {
                "instruction": q(i),
                "input": "Answer in one sentence." if i % 2 else "",
                "output": a(i),
                "system": "You know every item's colour.",
                "history": [[q(i + 1), a(i + 1)]] if i % 3 == 0 else [],
            }
            for i in rng
        ],
    )
    jsondoc(
        "llamafactory_alpaca_preference.json",
        [{"instruction": q(i), "input": "", "chosen": a(i), "rejected": bad(i)} for i in rng],
    )
    sharegpt = []
    for i in rng:
        conversations = [{"from": "human", "value": q(i)}]
        if i % 2:
            call = {"name": "lookup_colour", "arguments": {"item": i}}
            conversations += [
                {"from": "function_call", "value": json.dumps(call)},
                {"from": "observation", "value": json.dumps({"colour": COLOURS[i % len(COLOURS)]})},
            ]
        conversations.append({"from": "gpt", "value": a(i)})
        sharegpt.append(
            {
                "conversations": conversations,
                "system": "You can look colours up.",
                "tools": json.dumps([TOOL["function"]]),
            }
        )
    jsondoc("llamafactory_sharegpt_tools.json", sharegpt)
    jsondoc(
        "llamafactory_sharegpt_preference.json",
        [
            {
                "conversations": [{"from": "human", "value": q(i)}],
                "chosen": {"from": "gpt", "value": a(i)},
                "rejected": {"from": "gpt", "value": bad(i)},
            }
            for i in rng
        ],
    )
    jsondoc(
        "llamafactory_messages.json",
        [{"messages": [{"role": "system", "content": "Be brief."}, user(q(i)), assistant(a(i))]} for i in rng],
    )
    jsondoc(
        "llamafactory_kto.json",
        [{"messages": [user(q(i)), assistant(a(i) if i % 2 else bad(i))], "label": bool(i % 2)} for i in rng],
    )
    (OUT / "llamafactory_raw.txt").write_text("".join(f"{q(i)} {a(i)}\n" for i in rng), encoding="utf-8")
    # ---- OpenAI chat fine-tuning JSONL: parts, weight 0, tool calls and results, a tools list
    openai = []
    for i in rng:
        messages = [{"role": "system", "content": "You answer colour questions."}, user(q(i))]
        if i % 2:
            call_id = f"call_{i}"
            messages += [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "lookup_colour", "arguments": json.dumps({"item": i})},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": COLOURS[i % len(COLOURS)]},
            ]
        else:
            messages += [{"role": "assistant", "content": "Let me think.", "weight": 0}, user("Go on.")]
        messages.append({"role": "assistant", "content": [{"type": "text", "text": a(i)}], "weight": 1})
        openai.append({"messages": messages, "tools": [TOOL]} if i % 2 else {"messages": messages})
    jsonl("openai_chat.jsonl", openai)
    # ---- Axolotl: completion (text) and input_output (segments with a train flag)
    jsonl("axolotl_completion.jsonl", [{"text": f"{q(i)} {a(i)}"} for i in rng])
    jsonl(
        "axolotl_input_output.jsonl",
        [
            {
                "segments": [
                    {"label": False, "text": f"Question: {q(i)}\n"},
                    {"label": True, "text": f"Answer: {a(i)}"},
                ]
            }
            for i in rng
        ],
    )
    # ---- Plain prompt/answer files under the names people use
    jsonl("question_answer.jsonl", [{"question": q(i), "answer": a(i)} for i in rng])
    table("prompt_response.csv", ["prompt", "response"], [[q(i), a(i)] for i in rng])
    jsonl("instruction_response.jsonl", [{"instruction": q(i), "response": a(i)} for i in rng])
    table("input_output.csv", ["input", "output"], [[q(i), a(i)] for i in rng])
    jsonl("query_response.jsonl", [{"query": q(i), "response": a(i)} for i in rng])
    jsonl(
        "context_question_answer.jsonl",
        [{"context": f"Item {i} is {COLOURS[i % len(COLOURS)]}.", "question": q(i), "answer": a(i)} for i in rng],
    )
    # ---- Classification: GLUE-style TSV (label first, CRLF), the other column order, sentence pairs
    words = ["a great film", "a dull mess", "wonderful acting", "boring and long", "truly moving", "a waste"]
    table("glue_sst2.tsv", ["label", "sentence"], [[i % 2 ^ 1, f"{words[i % 6]} number {i}"] for i in rng], "\t")
    table(
        "sentence_label.csv",
        ["sentence", "sentiment"],
        [[f"{words[i % 6]} number {i}", ["pos", "neg"][i % 2]] for i in rng],
    )
    table(
        "nli_pairs.tsv",
        ["premise", "hypothesis", "label"],
        [
            [
                f"Item {i} is {COLOURS[i % 12]} and round.",
                f"Item {i} is {'round' if i % 2 else 'square'}.",
                ["entailment", "contradiction"][i % 2 ^ 1],
            ]
            for i in rng
        ],
        "\t",
    )


if __name__ == "__main__":
    main()
