"""The quick start: LoRA on SmolLM2-135M-Instruct with questions and answers about tunelab itself."""

from __future__ import annotations

from importlib import resources
from typing import Any


def faq_path() -> str:
    """The quick start's data: 64 questions and answers about tunelab, written for this project."""
    return str(resources.files("tunelab") / "assets" / "tunelab_faq.jsonl")


def quickstart_config() -> dict[str, Any]:
    """Config data of the quick start: small enough to load, evaluate, train and evaluate in minutes on 2 cores."""
    return {
        "problem_type": "causal_lm",
        "experiment_name": "quickstart",
        "llm_backbone": "smollm2-135m-instruct",
        "dataset": {
            "train_dataframe": faq_path(),
            "prompt_column": ["question"],
            "answer_column": "answer",
            "validation_size": 8,
        },
        "tokenizer": {"max_length_prompt": 96, "max_length_answer": 96, "max_length": 192},
        "training": {
            "adapter": "lora",
            "lora_r": 16,
            "lora_alpha": 32,
            "learning_rate": 5e-4,
            "epochs": 2,
            "batch_size": 8,
            "warmup_epochs": 0.2,
            "evaluation_epochs": 2.0,
            "logging_steps": 2,
        },
        "prediction": {"max_length_inference": 48, "batch_size_inference": 8},
        "environment": {"seed": 42},
    }
