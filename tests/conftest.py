"""Shared fixtures: tiny models built from a config, tiny data files, the real data folder."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# Tests never touch the network: a hub id must fail fast with tunelab's own error.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (../shared/data is not part of the repository)")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    return ASSETS / "tiny-tokenizer"


def save_tiny_llama(path: Path, tokenizer_dir: Path, **sizes) -> Path:
    """A random Llama with the tiny ChatML tokenizer saved at ``path`` (seed 0); ``sizes`` override the 2-layer,
    hidden-32 defaults (``LlamaConfig`` fields)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    fields = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        **(fields | sizes),
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer Llama (hidden 32, vocab 384) with the tiny ChatML tokenizer, saved as a local model folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer BERT encoder (hidden 32) with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory) -> Path:
    """40 arithmetic question/answer rows."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(40):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            fh.write(json.dumps({"question": f"what is {a} and {b}?", "answer": f"{a} and {b} is {a + b}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """60 rows of an easy two-class sentiment task (the telling word first and last, for any pooling)."""
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    lines = ["text,label"]
    for i in range(60):
        word = "great" if i % 2 == 0 else "terrible"
        lines.append(f"{word} movie {i} {word},{'positive' if i % 2 == 0 else 'negative'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def causal_config(model: Path, data: Path, out: Path, **sections) -> dict:
    """Plain config data for a fast causal-LM run on a tiny model."""
    cfg = {
        "llm_backbone": str(model),
        "output_directory": str(out),
        "experiment_name": "causal",
        "dataset": {
            "train_dataframe": str(data),
            "prompt_column": ["question"],
            "answer_column": "answer",
            "validation_size": 5,
        },
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 2},
        "prediction": {"max_length_inference": 8},
        "environment": {"seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def classification_config(model: Path, data: Path, out: Path, **sections) -> dict:
    """Plain config data for a fast classification run on a tiny model."""
    cfg = {
        "problem_type": "classification",
        "llm_backbone": str(model),
        "output_directory": str(out),
        "experiment_name": "cls",
        "dataset": {
            "train_dataframe": str(data),
            "prompt_column": ["text"],
            "label_column": "label",
            "validation_size": 0.2,
        },
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 5e-3},
        "environment": {"seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg
