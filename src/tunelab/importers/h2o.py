"""H2O LLM Studio experiment ``cfg.yaml`` -> tunelab config.

tunelab's field names follow H2O LLM Studio's, so most fields are copied section by section; H2O's "None" strings
mean unset, and its escaped text fields (``\\n``) are unescaped.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

from tunelab.config import SECTIONS
from tunelab.errors import ConfigError
from tunelab.importers.common import Mapper, is_unset
from tunelab.problem_spec import spec_of

PROBLEMS = {
    "text_causal_language_modeling": "causal_lm",
    "text_causal_classification_modeling": "classification",
    "text_causal_regression_modeling": "regression",
    "text_dpo_modeling": "dpo",
    "text_rlhf_language_modeling": "rl",
}
LOSSES = {
    "TokenAveragedCrossEntropy": "CrossEntropy",
    "CrossEntropy": "CrossEntropy",
    "BinaryCrossEntropyLoss": "CrossEntropy",
    "CrossEntropyLoss": "CrossEntropy",
    "MSELoss": "MSE",
    "L1Loss": "L1",
    "DPOLoss": ("Preference", "sigmoid"),
    "HingeLoss": ("Preference", "hinge"),
    "IPOLoss": ("Preference", "ipo"),
    "SimPOLoss": ("Preference", "simpo"),
}
REASONS = {
    "environment.gpus": "tunelab uses the visible GPUs: pick them with CUDA_VISIBLE_DEVICES, processes with --nproc",
    "environment.trust_remote_code": "tunelab never runs a model's own code",
    "environment.mixed_precision_dtype": "tunelab autocasts to bfloat16 where the device supports it, else float16",
    "environment.compile_model": "tunelab does not torch.compile the model",
    "environment.find_unused_parameters": "tunelab sets DDP's unused-parameter search itself",
    "architecture.pretrained_weights": "tunelab starts from a backbone; a finished tunelab run can be the llm_backbone",
    "tokenizer.add_prompt_answer_tokens": "tunelab adds no tokens to the tokenizer",
    "tokenizer.add_prefix_space": "tunelab keeps the tokenizer's own settings",
    "training.lora_unfreeze_layers": "tunelab's LoRA trains adapters only (adapter 'freeze' trains whole layers)",
    "training.differential_learning_rate_layers": "tunelab uses one learning rate",
    "training.train_validation_data": "tunelab never trains on the validation rows",
    "training.use_rlhf": "tunelab's online RL is problem_type rl",
    "prediction.num_history": "tunelab chat keeps the whole conversation",
    "prediction.max_time": "tunelab limits generation by tokens only",
    "prediction.metric_gpt_model": "tunelab's judge metric is set in the judge section (base_url, model)",
    "prediction.metric_gpt_template": "tunelab's judge metric is set in the judge section (prompt_template)",
    "logging.neptune_project": "tunelab has no Neptune logging",
}


def import_h2o(data: dict[str, Any], file: Path) -> Mapper:
    """Map an H2O LLM Studio experiment config.

    Raises:
        ConfigError: for a problem type tunelab lacks.
    """
    m = Mapper(data, str(file))
    kind = str(m.take("problem_type") or "text_causal_language_modeling")
    if kind not in PROBLEMS:
        raise ConfigError(
            f"H2O LLM Studio problem type '{kind}' has no tunelab equivalent",
            file=str(file),
            field="problem_type",
            hint="tunelab trains causal LM, classification, regression, DPO and RL experiments",
        )
    problem = PROBLEMS[kind]
    m.set("problem_type", problem, "problem_type")
    for key in ("experiment_name", "output_directory", "llm_backbone"):
        if m.take(key) is not None:
            m.set(key, str(m.get(key)), key)
    sections = {name: value for name, value in data.items() if isinstance(value, dict)}
    m.done.update(sections)
    for name in sorted(sections, key=lambda name: name != "dataset"):  # the data format first: others depend on it
        _section(m, name, sections[name], problem)
    branch = (sections.get("environment") or {}).get("huggingface_branch")
    if m.has("llm_backbone") and not is_unset(branch) and branch != "main":
        m.set("llm_backbone", f"{m.value('llm_backbone')}@{branch}", "environment.huggingface_branch")
    m.finish()
    return m


def _section(m: Mapper, name: str, section: dict[str, Any], problem: str) -> None:
    """Copy one section: special cases first, then every field tunelab has under the same name."""
    sub = Mapper(section, m.file)
    special = {
        "dataset": _dataset,
        "tokenizer": _tokenizer,
        "augmentation": _augmentation,
        "architecture": _architecture,
        "training": _training,
        "prediction": _prediction,
        "environment": _environment,
        "logging": _logging,
    }.get(name)
    if special is not None:
        special(m, sub, problem)
    fields = SECTIONS[name].model_fields if name in SECTIONS else {}
    for key, value in section.items():
        if key in sub.done or is_unset(value) or key not in fields:
            continue
        sub.done.add(key)
        m.set(f"{name}.{key}", _value(value), f"{name}.{key}")
    sub.explain({path.partition(".")[2]: why for path, why in REASONS.items() if path.startswith(f"{name}.")})
    sub.finish()
    m.left_out += [(f"{name}.{key}", why) for key, why in sub.left_out]


def _value(value: Any) -> Any:
    """H2O's escaped text ('\\n') as the text it stands for."""
    if isinstance(value, str) and "\\" in value:
        return codecs.decode(value, "unicode_escape")
    return value


def _dataset(m: Mapper, sub: Mapper, problem: str) -> None:
    parent = sub.take("parent_id_column")
    spec = spec_of(problem)
    pairs = spec.default_format == "preference"
    chained = parent is not None and spec.generative and "conversation" in spec.data_kinds  # chained conversations
    fmt = "preference" if pairs else "h2o_multiturn" if chained else "columns"
    m.set("dataset.format", fmt, "dataset.parent_id_column")
    if chained:
        m.set("dataset.parent_id_column", parent, "dataset.parent_id_column")
    elif sub.take("limit_chained_samples"):
        m.leave("dataset.limit_chained_samples", "applies to rows chained by parent_id_column, which is None")
    for key in ("system_column", "validation_dataframe", "test_dataframe"):
        if key in sub.source:
            m.set(f"dataset.{key}", sub.take(key) or "", f"dataset.{key}")
    answer = sub.take("answer_column")
    if answer is not None:
        target = "chosen_column" if pairs else "label_column" if spec.labelled else "answer_column"
        m.set(f"dataset.{target}", answer, "dataset.answer_column")
    if sub.take("rejected_answer_column") is not None:
        m.set("dataset.rejected_column", sub.get("rejected_answer_column"), "dataset.rejected_answer_column")
    if sub.take("rejected_prompt_column") is not None:
        sub.leave("rejected_prompt_column", "tunelab's preference pairs share one prompt")
    if sub.take("only_last_answer") is not None and sub.get("only_last_answer"):
        m.set("dataset.train_on", "last_answer", "dataset.only_last_answer")
    separator = sub.take("prompt_column_separator")
    if separator is not None and _value(separator) != "\n":
        sub.leave("prompt_column_separator", "tunelab joins several prompt columns with a newline")
    start = sub.take("text_system_start")
    if start is not None and m.value("dataset.system_column"):
        sub.leave("text_system_start", "tunelab puts the system text first without a start marker")
    for key in ("num_classes", "num_labels"):
        if sub.take(key) is not None:
            sub.leave(key, "tunelab finds the classes in the data")


def _augmentation(m: Mapper, sub: Mapper, problem: str) -> None:
    for key in ("skip_parent_probability", "random_parent_probability"):
        if m.value("dataset.format") != "h2o_multiturn" and sub.take(key):
            sub.leave(key, "applies to rows chained by parent_id_column, which is None")


def _tokenizer(m: Mapper, sub: Mapper, problem: str) -> None:
    if sub.take("use_fast") is False:
        sub.leave("use_fast", "tunelab loads the fast tokenizer where the model has one")


def _architecture(m: Mapper, sub: Mapper, problem: str) -> None:
    if sub.take("pretrained") is False:
        sub.leave("pretrained", "tunelab fine-tunes pretrained weights; it does not train from scratch")


def _training(m: Mapper, sub: Mapper, problem: str) -> None:
    if sub.take("lora") is not None:
        m.set("training.adapter", "lora" if sub.get("lora") else "none", "training.lora")
    loss = sub.take("loss_function")
    if loss is not None:
        mapped = LOSSES.get(str(loss))
        if mapped is None:
            sub.leave("loss_function", f"tunelab has no '{loss}' (it normalises by trained tokens)")
        elif isinstance(mapped, tuple):
            m.set("training.loss_function", mapped[0], "training.loss_function")
            m.set("training.preference_loss", mapped[1], "training.loss_function")
        else:
            m.set("training.loss_function", mapped, "training.loss_function")
    save = sub.take("save_checkpoint")
    if save is not None and save in ("best", "last"):
        m.set("training.save_best_checkpoint", save == "best", "training.save_checkpoint")
    elif save is not None:
        sub.leave("save_checkpoint", "tunelab always saves the finished model")
    if is_unset(sub.get("differential_learning_rate_layers")):
        sub.done.add("differential_learning_rate")  # inert without layers
    elif sub.take("differential_learning_rate") is not None:
        sub.leave("differential_learning_rate", "tunelab uses one learning rate")


def _prediction(m: Mapper, sub: Mapper, problem: str) -> None:
    metric = sub.take("metric")
    if metric == "GPT":
        sub.leave("metric", "H2O's GPT judge: tunelab's 'judge' metric needs judge.base_url and judge.model")
    elif metric is not None:
        metrics = spec_of(problem).metrics
        if metric in metrics:
            m.set("prediction.metric", metric, "prediction.metric")
        else:
            sub.leave("metric", f"not a tunelab {problem} metric ({', '.join(metrics)})")
    if metric != "GPT":
        sub.done.update({"metric_gpt_model", "metric_gpt_template"})  # inert without the GPT metric


def _environment(m: Mapper, sub: Mapper, problem: str) -> None:
    if sub.take("use_fsdp"):
        m.set("environment.distributed", "fsdp", "environment.use_fsdp")
    if sub.take("use_deepspeed"):
        m.set("environment.distributed", "deepspeed_zero3", "environment.use_deepspeed")
    sub.take("huggingface_branch")  # part of llm_backbone


def _logging(m: Mapper, sub: Mapper, problem: str) -> None:
    logger = sub.take("logger")
    if logger in ("W&B", "Wandb", "wandb"):
        m.set("environment.trackers", ["tensorboard", "wandb"], "logging.logger")
    elif logger == "MLflow":
        m.set("environment.trackers", ["tensorboard", "mlflow"], "logging.logger")
    elif logger is not None:
        sub.leave("logger", f"tunelab logs to TensorBoard, MLflow and W&B, not {logger}")
