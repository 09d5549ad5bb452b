"""The run configuration: one typed, validated schema for every way of driving tunelab.

Field names follow H2O LLM Studio's. Each field's ``description`` is the only place its help text lives: the CLI,
``tunelab config init`` and ``docs/config.md`` are generated from it.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from tunelab.errors import ConfigError
from tunelab.problem_spec import LowerIsBetter, ProblemOptions, ProblemSpec, all_specs, problem_types, spec_of

# Backbone model types that are encoders: no language-model head, so they cannot be preference-tuned.
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet")
# Metrics where a lower value is better; everything else is maximised.
# (The loss, and each problem type's ``ProblemSpec.lower_is_better``: ``metric in LOWER_IS_BETTER`` reads them.)
LOWER_IS_BETTER = LowerIsBetter()
# A user metric: an importable "module:function" (or "path/to/file.py:function").
CUSTOM_METRIC = re.compile(r"^[\w./\\-]+:[A-Za-z_]\w*$")


def backbone_model_type(name: str) -> str | None:
    """The transformers ``model_type`` of a built-in or local backbone, without loading it; None when unknown."""
    builtin = {"smollm2-135m-instruct": "llama", "all-minilm-l6-v2": "bert"}
    if name.strip().lower() in builtin:
        return builtin[name.strip().lower()]
    path = Path(name).expanduser() / "config.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("model_type") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


def metric_key(name: str) -> str:
    """The key a metric has in the metrics of an evaluation: lower case; a custom metric by its function name."""
    return name.rsplit(":", 1)[-1].lower() if CUSTOM_METRIC.match(name) else name.lower()


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(Section):
    train_dataframe: str | list[str] = Field(
        "",
        description="Training data: a CSV, TSV, JSON, JSONL, Parquet or text file (optionally .gz), a glob such as "
        "'data/*.jsonl', a list of those, a folder saved by datasets.save_to_disk, or a hub dataset "
        "'org/name[:config][@split]'. Paths are relative to the working directory.",
    )
    validation_strategy: Literal["automatic", "custom"] = Field(
        "automatic",
        description="'automatic' holds out `validation_size` of the training data; "
        "'custom' uses `validation_dataframe`.",
    )
    validation_dataframe: str | list[str] = Field(
        "", description="Validation data (same kinds as train_dataframe), used when validation_strategy is 'custom'."
    )
    test_dataframe: str | list[str] = Field(
        "", description="Optional test data, evaluated once after training and reported as 'test' metrics."
    )
    format: Literal[
        "auto",
        "columns",
        "alpaca",
        "messages",
        "sharegpt",
        "h2o_multiturn",
        "text",
        "input_output",
        "preference",
        "unpaired_preference",
        "prompt_only",
        "stepwise",
        "classification",
    ] = Field(
        "auto",
        description="How rows are read: 'columns' (prompt/answer columns; TRL prompt/completion), 'alpaca' "
        "(instruction, input, output, system, history), 'messages' (OpenAI/TRL role/content lists, tool calls, "
        "weight), 'sharegpt' (conversations with from/value, tools), 'h2o_multiturn' (rows chained by id/parent_id), "
        "'text' (raw text for continued pre-training), 'input_output' (Axolotl segments with train flags), "
        "'preference' (prompt/chosen/rejected, implicit prompt, alpaca or sharegpt preference), "
        "'unpaired_preference' (prompt/completion/label), 'prompt_only' (prompts for rl), 'stepwise' (TRL stepwise "
        "supervision), 'classification' (text and label columns); 'auto' detects it from the rows "
        "(`tunelab data inspect FILE` shows what it found).",
    )
    tools_column: str = Field(
        "tools",
        description="Column holding the tool definitions of a conversation (OpenAI 'tools', LLaMA-Factory sharegpt "
        "'tools'); handed to the chat template when it supports tools, else written into the system prompt.",
    )
    text_mode: Literal["line", "file"] = Field(
        "line", description="For .txt files: one document per line, or one document per file."
    )
    text_column: str = Field("text", description="Column holding raw text (format 'text').")
    messages_column: str = Field("messages", description="Column holding the message list (format 'messages').")
    id_column: str = Field("id", description="Row id column (format 'h2o_multiturn').")
    parent_id_column: str = Field(
        "parent_id", description="Column holding the id of the previous turn's row (format 'h2o_multiturn')."
    )
    limit_chained_samples: bool = Field(
        False,
        description="Format 'h2o_multiturn': one example per whole conversation (only the rows no other row "
        "continues, each with all its earlier turns) instead of one example per row.",
    )
    chosen_column: str = Field("chosen", description="Column holding the preferred answer (format 'preference').")
    rejected_column: str = Field("rejected", description="Column holding the worse answer (format 'preference').")
    label_delimiter: str = Field(
        "", description="Split label cells on this string for multi-label classification (lists also work)."
    )
    validation_size: float = Field(
        0.01,
        gt=0,
        description="Held-out share of the training data when validation_strategy is 'automatic': "
        "a fraction below 1, or a whole number of rows (at least 1 row is always held out).",
    )
    data_sample: float = Field(
        1.0,
        gt=0,
        description="Use only part of the training rows (after the validation split): a fraction up to 1, or a "
        "whole number of rows above 1. The sample is deterministic (split_seed).",
    )
    data_sample_choice: list[Literal["train", "validation"]] = Field(
        default_factory=lambda: ["train"],
        min_length=1,
        description="Which splits data_sample thins: 'train', 'validation' or both (H2O's Train/Validation).",
    )

    @field_validator("data_sample_choice", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        return [v.lower() if isinstance(v, str) else v for v in value] if isinstance(value, (list, tuple)) else value

    split_seed: int = Field(
        42,
        ge=0,
        description="Seed of the automatic train/validation split, so the same data always splits the same way.",
    )
    prompt_column: tuple[str, ...] = Field(
        ("instruction",),
        min_length=1,
        description="Column(s) holding the prompt (causal LM) or the text to classify; several are joined by newlines.",
    )
    answer_column: str = Field("output", description="Column holding the answer the model should learn (causal LM).")
    system_column: str = Field("", description="Column holding a per-row system prompt; empty for none.")
    label_column: str = Field("label", description="Column holding the class label (classification).")
    drop_missing_labels: bool = Field(
        False,
        description="Classification/regression: leave out rows whose label is missing (empty, NaN, None, null, NA) "
        "and say how many; false = stop with an error naming those rows.",
    )
    text_prompt_start: str = Field("", description="Text put before every prompt (when no chat template is used).")
    text_answer_separator: str = Field(
        "", description="Text put between the prompt and the answer (when no chat template is used)."
    )
    add_eos_token_to_system: bool = Field(
        False,
        description="End the system text with the EOS token instead of a newline (when no chat template is used).",
    )
    add_eos_token_to_prompt: bool = Field(
        True, description="End the prompt with the EOS token (when no chat template is used)."
    )
    add_eos_token_to_answer: bool = Field(
        True,
        description="End the answer with the EOS token, so the model learns to stop (when no chat template is used).",
    )
    mask_prompt_labels: bool = Field(True, description="Train only on answer tokens; prompt tokens get no loss.")
    use_chat_template: Literal["auto"] | bool = Field(
        "auto",
        description="Render rows with a chat template: 'auto' uses the tokenizer's or the one chat_template names, "
        "else the built-in 'plain' one (unless text_prompt_start or text_answer_separator is set).",
    )
    chat_template: str = Field(
        "",
        description="The chat template: empty = the tokenizer's own; a built-in name (chatml, llama3, zephyr, "
        "alpaca, plain); or a path to a Jinja file. The template used is saved with the run and used by every later "
        "command.",
    )
    system_prompt: str = Field(
        "", description="System prompt for conversations that have none (a system_column value wins)."
    )
    personalize: bool = Field(
        False,
        description="Rename the assistant in prompts and answers: 'Open Assistant' (and its misspellings) and "
        "'Assistant' become chatbot_name, 'LAION' becomes chatbot_author (for OpenAssistant-derived data).",
    )
    chatbot_name: str = Field("h2oGPT", min_length=1, description="The assistant's name used by personalize.")
    chatbot_author: str = Field("H2O.ai", min_length=1, description="The assistant's author used by personalize.")
    train_on: Literal["last_answer", "all_answers"] = Field(
        "all_answers",
        description="In multi-turn conversations, train on every assistant turn or only the last one "
        "(H2O's only_last_answer).",
    )
    max_truncated_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="The data check stops the run when more than this share of training answers is cut by "
        "the token limits.",
    )

    @field_validator("prompt_column", mode="before")
    @classmethod
    def _one_or_more_columns(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("train_dataframe", "validation_dataframe", "test_dataframe")
    @classmethod
    def _one_source_or_list(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) == 1:
            return value[0]
        return value

    @field_validator("validation_size", "data_sample")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("a value above 1 is a row count and must be a whole number")
        return value


class TokenizerConfig(Section):
    max_length_prompt: int = Field(
        128, ge=1, le=131072, description="Longest prompt in tokens; longer prompts are cut from the left."
    )
    max_length_answer: int = Field(
        128, ge=1, le=131072, description="Longest answer in tokens; longer answers are cut from the right."
    )
    max_length: int = Field(
        256,
        ge=2,
        le=131072,
        description="Longest prompt + answer in tokens; the prompt is cut first when it is exceeded.",
    )
    padding_quantile: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Pad each batch to this quantile of its lengths (1.0 = the longest row); longer rows are cut.",
    )


class AugmentationConfig(Section):
    token_mask_probability: float = Field(
        0.0, ge=0, lt=1, description="Share of prompt tokens replaced by the pad/mask token during training."
    )
    skip_parent_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Format 'h2o_multiturn': leave out each earlier turn of a training conversation with this "
        "probability (drawn once per row when the training split is built, seeded by dataset.split_seed); "
        "validation conversations stay whole.",
    )
    random_parent_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Format 'h2o_multiturn': with this probability, put the turn of a random training row before a "
        "training conversation, so the model learns to answer the last question and ignore unrelated history "
        "(drawn once per row, seeded by dataset.split_seed; validation rows never get one).",
    )


class ArchitectureConfig(Section):
    backbone_dtype: Literal["float32", "float16", "bfloat16", "int8", "int4"] = Field(
        "float32",
        description="Data type the backbone weights are loaded in; int8/int4 quantise them with bitsandbytes "
        "(int4 + LoRA = QLoRA). Quantised backbones train adapters only.",
    )
    quantization: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (backbone_dtype: int4).")
    double_quantization: bool = Field(
        True, description="Quantise the 4-bit quantisation constants too (saves ~0.4 bits per parameter)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Data type of the matrix products of a quantised backbone; 'auto' = bfloat16 where the device "
        "supports it, else float32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30% slower."
    )
    force_embedding_gradients: bool = Field(
        False, description="Make the input embeddings require gradients (needed by some adapter set-ups)."
    )
    intermediate_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout applied inside the backbone (hidden and attention dropout)."
    )


class TrainingConfig(Section):
    loss_function: str = Field(
        "",
        description="Training loss: CrossEntropy (causal LM, classification); MSE, L1 or Huber (regression); "
        "BradleyTerry (reward); Preference (dpo, see preference_loss). Empty = the problem type's default.",
    )
    reward_margin: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Reward models: the Bradley-Terry loss -logsigmoid(r_chosen - r_rejected - margin) asks the "
        "chosen answer to score at least this much higher; 0 = plain Bradley-Terry.",
    )
    preference_loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid",
        description="dpo: 'sigmoid' (DPO), 'ipo', 'hinge' (SLiC) compare policy and reference log-probabilities of "
        "the chosen and rejected answers; 'simpo' (length-normalised, reference-free, with simpo_gamma) and 'orpo' "
        "(odds ratio plus the chosen answer's cross-entropy, reference-free) need no reference model.",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="dpo: how strongly the policy may move away from the reference (the implicit reward is beta x "
        "the log-probability ratio); for orpo the weight of the odds-ratio term. SimPO usually wants 2 to 10.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="dpo (sigmoid, simpo): the assumed share of preference labels that are flipped (conservative "
        "DPO); 0 = trust every label.",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, le=100, description="dpo with simpo: the target reward margin gamma between chosen and rejected."
    )
    precompute_reference: bool = Field(
        False,
        description="dpo: compute the reference model's log-probabilities of the whole training split once before "
        "training, instead of a second forward pass at every step (faster; not for simpo/orpo, which have none).",
    )
    optimizer: Literal[
        "AdamW", "Adam", "SGD", "RMSprop", "Adadelta", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "Adafactor", "Lion"
    ] = Field(
        "AdamW",
        description="Optimizer. AdamW is fused (or foreach) where torch supports it; AdamW8bit, PagedAdamW(8bit) "
        "and Lion come from bitsandbytes, Adafactor from transformers.",
    )
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Peak learning rate.")
    batch_size: int | Literal["auto"] = Field(
        4,
        description="Rows per micro-batch (per process); 'auto' = the largest batch (up to 32) that the memory planner "
        "fits in environment.memory_budget, with gradient accumulation raised to keep at least 8 rows per step.",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number of rows or 'auto'")
        if not 1 <= value <= 65536:
            raise ValueError("must be between 1 and 65536 (or 'auto')")
        return value

    drop_last_batch: bool = Field(True, description="Drop the last incomplete training batch of each epoch.")
    epochs: int = Field(1, ge=0, le=10000, description="Passes over the training data.")
    max_steps: int = Field(
        -1, ge=-1, description="Stop after this many optimizer steps; overrides `epochs` when above 0."
    )
    schedule: Literal["Cosine", "Linear", "Constant"] = Field(
        "Cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="Linear warm-up length in epochs (fractions allowed). Give warm-up one way only: warmup_epochs, "
        "warmup_steps or warmup_ratio; the other two stay 0.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up length in optimizer steps (instead of epochs).")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Linear warm-up length as a share of all optimizer steps (instead of epochs)."
    )
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay; never applied to biases or normalisation weights."
    )
    gradient_clip: float = Field(0.0, ge=0, description="Clip the gradient norm to this value; 0 = off.")
    grad_accumulation: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    packing: bool = Field(
        False,
        description="Concatenate examples into rows of up to tokenizer.max_length tokens (attention and labels never "
        "cross examples), so almost no compute is spent on padding. batch_size then counts packed rows.",
    )
    padding_free: bool = Field(
        True,
        description="Causal LM: train each batch as one sequence of its rows laid end to end (position ids restart "
        "per row, attention stays inside each row): the same rows and loss as a padded batch without computing "
        "padding. Ignored with packing and for prefix/prompt tuning.",
    )
    chunked_loss: bool = Field(
        True,
        description="Causal LM: apply the output layer and cross-entropy a chunk of tokens at a time, so the "
        "[tokens, vocabulary] logits never exist at once (same loss and gradients, far less memory).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch rows of similar length together (less padding without packing); batches are still shuffled.",
    )
    adapter: Literal[
        "lora", "ia3", "prefix_tuning", "prompt_tuning", "ln_tuning", "bitfit", "freeze", "head_only", "none"
    ] = Field(
        "lora",
        description="What is trained: 'lora' (low-rank adapters; use_dora/use_rslora variants), 'ia3' (learned "
        "activation scales), 'prefix_tuning' / 'prompt_tuning' (num_virtual_tokens soft tokens), 'ln_tuning' (norm "
        "layers), 'bitfit' (biases), 'freeze' (trainable_layers / trainable_patterns), 'head_only' (the output "
        "head), 'none' (every weight: full fine-tune). Classification heads always train.",
    )
    use_dora: bool = Field(False, description="DoRA: LoRA with a learned magnitude per output feature.")
    use_rslora: bool = Field(False, description="rsLoRA: scale LoRA by lora_alpha / sqrt(lora_r).")
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Soft tokens learned by prefix_tuning and prompt_tuning."
    )
    trainable_layers: int = Field(0, ge=0, description="freeze: train the last this many transformer layers.")
    trainable_patterns: str = Field(
        "", description="freeze: comma-separated regular expressions of parameter names that also train."
    )
    lora_r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str = Field(
        "",
        description="Modules LoRA/DoRA (and IA3) adapt: comma-separated names (q_proj,v_proj), a regular expression "
        "matched against full module names, or all-linear; empty = all linear layers except the output head for LoRA, "
        "peft's per-architecture default for IA3.",
    )
    save_best_checkpoint: bool = Field(
        False,
        description="Keep the weights of the best validation evaluation and save those as the run's model "
        "instead of the last ones.",
    )
    load_best_model_at_end: bool = Field(
        False, description="Same as save_best_checkpoint: finish with the weights of the best evaluation."
    )
    metric_for_best: str = Field(
        "",
        description="Metric that picks the best checkpoint and drives early stopping: any metric evaluation logs "
        "(e.g. loss, bleu, rouge_l, accuracy; the logged names eval_loss, val_loss, eval_bleu... mean the same); "
        "empty = prediction.metric. Lower is better for loss and perplexity, higher for the rest.",
    )

    @field_validator("metric_for_best")
    @classmethod
    def _logged_metric_name(cls, value: str) -> str:
        # metrics.jsonl and the Hugging Face Trainer name validation metrics eval_loss, val_loss...: the same metric.
        return re.sub(r"^(eval|val|validation)[_/]", "", value.strip(), flags=re.IGNORECASE)

    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without improvement of metric_for_best; 0 = off."
    )
    evaluation_epochs: float = Field(
        1.0, gt=0, description="Evaluate every this many epochs (fractions allowed); always also at the end."
    )
    eval_steps: int = Field(
        0, ge=0, description="Evaluate every this many optimizer steps instead of every evaluation_epochs; 0 = off."
    )
    save_steps: int = Field(
        0, ge=0, description="Write a resumable checkpoint every this many optimizer steps; 0 = off."
    )
    save_epochs: float = Field(
        1.0, ge=0, description="Write a resumable checkpoint every this many epochs (fractions allowed); 0 = off."
    )
    save_total_limit: int = Field(
        2, ge=0, description="Keep at most this many step checkpoints (the best one is always kept); 0 = keep all."
    )
    max_nan_skips: int = Field(
        0, ge=0, description="Skip up to this many optimizer steps with a NaN/inf loss or gradient before stopping."
    )
    max_loss_growth: float = Field(
        10.0,
        ge=0,
        description="Stop the run (exit code 3) when the smoothed training loss grows past this many times its start "
        "(the mean of the first 5 steps, or the first step's loss if lower): a learning rate too high; 0 = off.",
    )

    @field_validator("max_loss_growth")
    @classmethod
    def _growth_above_one(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError("must be above 1 (a growth factor), or 0 to turn the check off")
        return value

    evaluate_before_training: bool = Field(
        True, description="Evaluate the untouched backbone first, so the run reports before vs after."
    )
    logging_steps: int = Field(
        10, ge=1, description="Log loss, learning rate and throughput every this many optimizer steps."
    )

    # The run's problem-type options (``ProblemSpec.options``), validated by ``RunConfig`` (which knows the problem
    # type) and written back among the section's fields; read them with ``RunConfig.problem_options``.
    _options: ProblemOptions | None = PrivateAttr(None)

    @model_serializer(mode="wrap")
    def _dump_with_options(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        if self._options is not None and isinstance(data, dict):
            data.update(
                self._options.model_dump(
                    mode=info.mode,
                    exclude_unset=info.exclude_unset,
                    exclude_defaults=info.exclude_defaults,
                    exclude_none=info.exclude_none,
                )
            )
        return data


def option_fields() -> list[tuple[str, str, FieldInfo]]:
    """Every problem type's own config fields (``ProblemSpec.options``) as (problem type, field name, field), in
    registration order; each is written in the training section."""
    return [(s.name, name, f) for s in all_specs() if s.options for name, f in s.options.model_fields.items()]


def _split_options(value: dict[str, Any], spec: ProblemSpec | None) -> tuple[dict[str, Any], dict[str, Any], list]:
    """A raw training section as (its own fields and unknown keys, the options of ``spec``, pydantic line errors for
    options of other problem types). Without a spec (an unknown problem type, reported on its own) every option is
    set aside."""
    owners: dict[str, list[str]] = {}
    for owner, name, _ in option_fields():
        owners.setdefault(name, []).append(owner)
    own = spec.options.model_fields if spec is not None and spec.options is not None else {}
    rest, mine, foreign = {}, {}, []
    for key, item in value.items():
        if key not in owners:
            rest[key] = item
        elif spec is None:
            continue
        elif key in own:
            mine[key] = item
        else:
            message = f"a {' and '.join(owners[key])} option; this run's problem_type is {spec.name}"
            foreign.append({"type": PydanticCustomError("problem_option", message), "loc": (key,), "input": item})
    return rest, mine, foreign


class PredictionConfig(Section):
    metric: str = Field(
        "",
        description="Validation metric that picks the best checkpoint. Causal LM: BLEU, Perplexity, chrF, ROUGE_L, "
        "Exact_Match, judge (an LLM grades each answer, see the judge section) or a Python function "
        "'module:function' (called with predictions and references, returns a number); classification: Accuracy, "
        "F1 (macro), F1_Micro, AUC, MCC; regression: MAE, RMSE, R2; reward: Pairwise_Accuracy, Mean_Margin; dpo: "
        "Reward_Accuracy, Reward_Margin, Chosen_Logps, Rejected_Logps. Empty = the problem type's default.",
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="More metrics to report beside `metric` (same names); loss is always reported.",
    )
    eval_max_rows: int = Field(
        0,
        ge=0,
        description="Evaluate at most this many validation rows (a fixed sample) during training; the final "
        "evaluation uses every row. 0 = every row every time.",
    )
    min_length_inference: int = Field(2, ge=0, description="Fewest new tokens generated per answer.")
    max_length_inference: int = Field(256, ge=1, description="Most new tokens generated per answer.")
    batch_size_inference: int = Field(
        0,
        ge=0,
        description="Rows per generation/prediction batch; 0 = auto (as many as the memory planner fits, at most 64).",
    )
    do_sample: bool = Field(False, description="Sample answers instead of greedy decoding.")
    num_beams: int = Field(1, ge=1, le=64, description="Beam-search width; 1 = no beam search.")
    temperature: float = Field(0.3, gt=0, le=100, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus-sampling share (with do_sample).")
    top_k: int = Field(
        0, ge=0, le=1_000_000, description="Sample only from the k most likely tokens (with do_sample); 0 = off."
    )
    min_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Drop tokens less likely than min_p times the most likely one (with do_sample); 0 = off.",
    )
    repetition_penalty: float = Field(1.0, gt=0, le=100, description="Penalty for repeating tokens; 1.0 = none.")
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=1024, description="Never repeat an n-gram of this many tokens within an answer; 0 = off."
    )
    stop_tokens: str = Field(
        "", description="Comma-separated strings that end generation in addition to EOS; never part of an answer."
    )
    seed: int = Field(
        -1,
        ge=-1,
        le=2**32 - 1,
        description="Seed of sampling: the same seed, inputs and settings give the same answers; -1 = unseeded.",
    )
    response_format: str = Field(
        "",
        description="Constrain every answer to JSON (constrained decoding with xgrammar): 'json_object' for any "
        "JSON object, or a JSON schema, inline or as a path to a .json file (stored inline in the run); "
        "empty = free text.",
    )

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: str) -> str:
        text = value.strip()
        if text in ("", "text", "json_object"):
            return "" if text == "text" else text
        if not text.startswith("{"):
            path = Path(text).expanduser()
            if path.suffix.lower() != ".json" or not path.is_file():
                raise ValueError("must be 'json_object', a JSON schema, or the path of a .json file holding one")
            text = path.read_text(encoding="utf-8")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the JSON schema is not valid JSON ({exc.msg}, char {exc.pos})") from None
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema must be a JSON object")
        return json.dumps(schema, separators=(",", ":"))


class JudgeConfig(Section):
    base_url: str = Field(
        "",
        description="OpenAI-compatible endpoint of the judge model, e.g. https://api.openai.com/v1 or the address "
        "of a `tunelab serve`; needed when a metric is 'judge'.",
    )
    model: str = Field("", description="Model name sent to the judge endpoint.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable that holds the judge's API key (may be unset)."
    )
    prompt_template: str = Field(
        "",
        description="Judge prompt with {question}, {reference} and {answer}; a .txt path or inline text. Empty = the "
        "built-in prompt asking for a score from 1 to 10.",
    )
    max_concurrency: int = Field(4, ge=1, le=256, description="Judge requests in flight at once.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed request (with exponential backoff).")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one judge reply.")
    max_tokens: int = Field(64, ge=1, description="Most tokens of a judge reply.")
    cache: bool = Field(True, description="Remember judge replies on disk so re-evaluating the same answers is free.")


class RLConfig(Section):
    algorithm: Literal["grpo", "ppo"] = Field(
        "grpo",
        description="'grpo': advantages are each completion's reward against the other completions of its prompt "
        "(group-normalised, no value model); 'ppo': a value head on the policy and GAE over the completion tokens.",
    )
    reward_function: str = Field(
        "",
        description="A Python reward 'module:function' or 'path/to/file.py:function', called as fn(prompts, "
        "completions, references=..., finished=..., **reward_kwargs) and returning one number per completion. "
        "Examples: tunelab.rewards:length_reward, format_reward, exact_match_reward, number_in_range_reward.",
    )
    reward_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to reward_function (e.g. {max_words: 20})."
    )
    reward_model: str = Field(
        "",
        description="A finished reward run directory (problem_type: reward) that scores each completion; added to "
        "reward_function's reward when both are set.",
    )
    num_generations: int = Field(
        4, ge=1, le=64, description="Completions sampled per prompt (GRPO compares them; at least 2 for grpo)."
    )
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Most tokens per sampled completion.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus-sampling share of the completions.")
    kl_coef: float = Field(
        0.04,
        ge=0,
        le=100,
        description="Weight of the KL penalty to the reference model (the backbone with the adapter switched "
        "off): in the loss for grpo, in the per-token reward for ppo; 0 = no reference pass.",
    )
    clip_range: float = Field(
        0.2, gt=0, lt=1, description="PPO/GRPO clipping of the probability ratio to [1 - clip_range, 1 + clip_range]."
    )
    num_iterations: int = Field(
        1,
        ge=1,
        le=16,
        description="Optimizer steps on each batch of completions before new ones are sampled (the clipping "
        "matters from the second on).",
    )
    scale_rewards: bool = Field(True, description="grpo: divide each group's advantages by its reward std.")
    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount of future rewards.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="ppo: GAE's lambda.")
    value_coef: float = Field(0.1, ge=0, le=100, description="ppo: weight of the value-head loss.")
    value_clip: float = Field(0.2, gt=0, le=100, description="ppo: clipping of the value change per update.")


class EnvironmentConfig(Section):
    mixed_precision: Literal["auto"] | bool = Field(
        "auto",
        description="Autocast to bf16/fp16 during training: 'auto' turns it on where the device supports it (GPUs).",
    )
    number_of_workers: int = Field(0, ge=0, le=64, description="Data-loader worker processes.")
    release_cpu_memory: bool = Field(
        True,
        description="On CPU (Linux), give memory freed during the forward and backward passes back to the system "
        "every few layers: up to ~35% lower peak memory for a few percent more time.",
    )
    memory_budget: float = Field(
        0.9, gt=0, le=1, description="Share of the device memory (GPU, else RAM) the planner may fill."
    )
    seed: int = Field(-1, ge=-1, description="Random seed; -1 picks one at random. The seed actually used is recorded.")
    distributed: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp",
        description="How several processes share the work (tunelab train --nproc N): DDP replicates the model; "
        "FSDP and DeepSpeed ZeRO shard it (GPUs; they run through a generated accelerate config).",
    )
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers: TensorBoard always; MLflow and Weights & Biases when installed "
        "(pip install 'tunelab[trackers]'; configured by their usual environment variables, e.g. "
        "MLFLOW_TRACKING_URI, WANDB_PROJECT; W&B runs offline without an API key).",
    )


SECTIONS: dict[str, type[Section]] = {
    "dataset": DatasetConfig,
    "tokenizer": TokenizerConfig,
    "augmentation": AugmentationConfig,
    "architecture": ArchitectureConfig,
    "training": TrainingConfig,
    "prediction": PredictionConfig,
    "judge": JudgeConfig,
    "rl": RLConfig,
    "environment": EnvironmentConfig,
}


class RunConfig(BaseModel):
    """Everything that defines a run. Runtime state (step, RNG, best metric) is never here."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    problem_type: str = Field(
        "causal_lm",
        description="What is trained, e.g. 'causal_lm' (instruction/chat SFT), 'classification' or 'regression' "
        "(one number per text, from label_column), 'reward' (a reward model scoring answers, trained on preference "
        "pairs), 'dpo' (preference tuning of a causal LM on pairs: DPO, IPO, hinge, SimPO, ORPO) or 'rl' (online RL: "
        "sampled completions scored by a reward function or model, GRPO or PPO; see the rl section). "
        "docs/problem-types.md describes every registered type.",
    )
    experiment_name: str = Field(
        "tunelab-run", min_length=1, description="Name of the run; its directory is output_directory/experiment_name."
    )
    output_directory: str = Field("output", min_length=1, description="Folder that holds run directories.")
    llm_backbone: str = Field(
        "smollm2-135m-instruct",
        min_length=1,
        description="Base model: a built-in name (smollm2-135m-instruct, all-minilm-l6-v2), a local folder, "
        "a .gguf file or a Hugging Face hub id.",
    )
    dataset: DatasetConfig = Field(
        default_factory=DatasetConfig, description="Data files, columns, validation split and prompt rendering."
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Token-length limits and padding.")
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig, description="Training-time data augmentation."
    )
    architecture: ArchitectureConfig = Field(
        default_factory=ArchitectureConfig, description="How the backbone is loaded and run."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="What is trained, the optimizer, schedule and evaluation cadence."
    )
    prediction: PredictionConfig = Field(
        default_factory=PredictionConfig, description="Validation metric and generation settings."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, description="The LLM that grades answers when a metric is 'judge'."
    )
    rl: RLConfig = Field(
        default_factory=RLConfig, description="Online reinforcement learning (problem_type rl): sampling, reward, loss."
    )
    environment: EnvironmentConfig = Field(
        default_factory=EnvironmentConfig, description="Precision, data-loading workers and the random seed."
    )

    @field_validator("problem_type")
    @classmethod
    def _known_problem_type(cls, value: str) -> str:
        try:
            spec_of(value)
        except ConfigError as exc:
            raise ValueError(f"{exc.what}; {exc.hint}" if exc.hint else exc.what) from None
        return value

    @property
    def spec(self) -> ProblemSpec:
        """What this run's problem type is and offers (``tunelab.problem_spec``)."""
        return spec_of(self.problem_type)

    @field_validator("training", mode="wrap")
    @classmethod
    def _training_with_options(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """The training section's own fields, and the problem type's options (``ProblemSpec.options``) written among
        them: those are validated against the run's problem type; another type's option is named as such."""
        if not isinstance(value, dict):
            return handler(value)
        problem_type = info.data.get("problem_type")  # absent when invalid (then reported on its own)
        spec = spec_of(problem_type) if problem_type is not None else None
        rest, mine, errors = _split_options(value, spec)
        options = None
        try:
            training = handler(rest)
        except ValidationError as exc:
            if not errors and not mine:
                raise
            errors = [{k: e[k] for k in ("type", "loc", "input", "ctx") if k in e} for e in exc.errors()] + errors
        if spec is not None and spec.options is not None and mine:
            try:
                options = spec.options.model_validate(mine)
            except ValidationError as exc:
                errors += [{k: e[k] for k in ("type", "loc", "input", "ctx") if k in e} for e in exc.errors()]
        if errors:
            raise ValidationError.from_exception_data("TrainingConfig", errors)
        training._options = options
        return training

    @property
    def problem_options(self) -> ProblemOptions | None:
        """This run's problem-type options (``ProblemSpec.options``; defaults for those not set), or None when its
        problem type has none. Typed: ``KTOOptions.of(cfg)`` (``problem_spec.ProblemOptions.of``)."""
        model = self.spec.options
        if model is None:
            return None
        if not isinstance(self.training._options, model):
            self.training._options = model()
        return self.training._options

    @field_validator("experiment_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it becomes a directory name)")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        spec = self.spec
        self.training._options = self.problem_options  # the defaults when none are set (then saved with the rest)
        if not self.prediction.metric:
            self.prediction.metric = spec.metrics[0]
        if not self.training.loss_function:
            self.training.loss_function = spec.losses[0]
        canonical = {m.lower(): m for m in spec.metrics}
        self.prediction.metric = canonical.get(self.prediction.metric.lower(), self.prediction.metric)
        self.prediction.metrics = [canonical.get(m.lower(), m) for m in self.prediction.metrics]
        problems = self.problems()
        if problems:
            raise ValueError("\n".join(f"{path}: {message}" for path, message in problems))
        return self

    def problems(self) -> list[tuple[str, str]]:
        """Every cross-field inconsistency as (dotted field path, message): the generic rules, then the problem
        type's own (``ProblemSpec.rules``)."""
        found = []
        metrics = self.spec.metrics
        for path, name in [("prediction.metric", self.prediction.metric)] + [
            ("prediction.metrics", m) for m in self.prediction.metrics
        ]:
            if name in metrics or CUSTOM_METRIC.match(name):
                continue
            close = [m for m in metrics if m.lower() == name.lower()]
            hint = (
                f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(metrics)} or 'module:function'"
            )
            found.append((path, f"'{name}' is not a {self.problem_type} metric; {hint}"))
        if "judge" in self.all_metrics() and not (self.judge.base_url and self.judge.model):
            found.append(("judge.base_url", "the judge metric needs judge.base_url and judge.model"))
        losses = self.spec.losses
        if self.training.loss_function not in losses:
            found.append(
                (
                    "training.loss_function",
                    f"'{self.training.loss_function}' is not available for "
                    f"{self.problem_type}; choose one of {', '.join(losses)}",
                )
            )
        if self.dataset.validation_strategy == "custom" and not self.dataset.validation_dataframe:
            found.append(("dataset.validation_dataframe", "required when validation_strategy is 'custom'"))
        aug = self.augmentation
        chained = aug.skip_parent_probability or aug.random_parent_probability or self.dataset.limit_chained_samples
        if chained and self.dataset.format not in ("auto", "h2o_multiturn"):
            found.append(
                (
                    "dataset.format",
                    "limit_chained_samples and the parent probabilities apply to rows chained by parent_id_column "
                    f"(format 'h2o_multiturn'), not to '{self.dataset.format}'",
                )
            )
        if self.training.metric_for_best and self.training.metric_for_best.lower() not in self.metric_names():
            found.append(
                (
                    "training.metric_for_best",
                    f"'{self.training.metric_for_best}' is not reported for "
                    f"{self.problem_type}; choose one of {', '.join(self.metric_names())}",
                )
            )
        quantised = self.architecture.backbone_dtype in ("int8", "int4")
        if quantised and self.training.adapter in ("none", "bitfit", "freeze", "head_only"):
            found.append(
                (
                    "training.adapter",
                    f"a quantised ({self.architecture.backbone_dtype}) backbone cannot be "
                    f"trained with '{self.training.adapter}'; use an adapter such as lora (QLoRA)",
                )
            )
        if self.training.adapter in ("prefix_tuning", "prompt_tuning") and self.training.packing:
            found.append(
                (
                    "training.packing",
                    f"{self.training.adapter} adds soft tokens to every sequence and cannot be combined with packing",
                )
            )
        warmups = [name for name in ("warmup_epochs", "warmup_steps", "warmup_ratio") if getattr(self.training, name)]
        if len(warmups) > 1:
            found.append(
                (
                    f"training.{warmups[1]}",
                    f"warm-up is given twice ({' and '.join(warmups)}): set one of them, the other to 0",
                )
            )
        if (self.training.use_dora or self.training.use_rslora) and self.training.adapter != "lora":
            found.append(("training.use_dora", "use_dora and use_rslora are LoRA options (training.adapter: lora)"))
        return found + self.spec.rules(self)

    def all_metrics(self) -> list[str]:
        """The configured metrics (``prediction.metric`` first, then ``prediction.metrics``, then the problem type's
        metric that ``training.metric_for_best`` names, so that it is computed), as written."""
        out = [self.prediction.metric] if self.prediction.metric else []
        out += [m for m in self.prediction.metrics if m not in out]
        best = self.training.metric_for_best.lower()
        named = [m for m in self.spec.metrics if m.lower() == best]
        return out + [m for m in named if m.lower() not in {metric_key(o) for o in out}]

    def warnings(self) -> list[tuple[str, str]]:
        """Fields set to values that another field turns off, as (dotted field path, message): valid, but ignored."""
        found = []
        aug, ds, t, arch = self.augmentation, self.dataset, self.training, self.architecture
        if aug.token_mask_probability > 0 and not self.spec.token_masking:
            masking = " and ".join(s.name for s in all_specs() if s.token_masking)
            found.append(("augmentation.token_mask_probability", f"applies to {masking}, not {self.problem_type}"))
        elif aug.token_mask_probability > 0 and not ds.mask_prompt_labels:
            found.append(
                (
                    "augmentation.token_mask_probability",
                    "masks prompt tokens, and with dataset.mask_prompt_labels: false every token is trained, so "
                    "none is masked; set mask_prompt_labels: true or token_mask_probability: 0",
                )
            )
        if t.max_steps > 0 and "epochs" in t.model_fields_set:
            found.append(("training.epochs", f"ignored: training.max_steps ({t.max_steps}) decides the length"))
        if t.eval_steps > 0 and "evaluation_epochs" in t.model_fields_set:
            found.append(("training.evaluation_epochs", f"ignored: training.eval_steps ({t.eval_steps}) is set"))
        if t.save_steps > 0 and t.save_epochs > 0 and "save_epochs" in t.model_fields_set:
            found.append(("training.save_epochs", f"ignored: training.save_steps ({t.save_steps}) is set"))
        adapter_fields = {
            ("lora_r", "lora_alpha", "lora_dropout"): ("lora",),
            ("lora_target_modules",): ("lora", "ia3"),
            ("num_virtual_tokens",): ("prefix_tuning", "prompt_tuning"),
            ("trainable_layers", "trainable_patterns"): ("freeze",),
        }
        for names, adapters in adapter_fields.items():
            for name in names:
                if name in t.model_fields_set and t.adapter not in adapters:
                    found.append((f"training.{name}", f"ignored: applies to {' and '.join(adapters)}, not {t.adapter}"))
        if t.padding_free and "padding_free" in t.model_fields_set and t.packing:
            found.append(("training.padding_free", "ignored: training.packing lays out the rows itself"))
        for name in ("quantization", "double_quantization"):
            if name in arch.model_fields_set and arch.backbone_dtype != "int4":
                found.append(
                    (f"architecture.{name}", f"ignored: applies to backbone_dtype int4, not {arch.backbone_dtype}")
                )
        if "compute_dtype" in arch.model_fields_set and arch.backbone_dtype not in ("int8", "int4"):
            found.append(("architecture.compute_dtype", "ignored: applies to quantised backbones (int8, int4)"))
        if ds.use_chat_template is True:
            for name in ("add_eos_token_to_system", "add_eos_token_to_prompt", "add_eos_token_to_answer"):
                if name in ds.model_fields_set:
                    found.append((f"dataset.{name}", "ignored: the chat template (use_chat_template: true) decides"))
        return found

    def metric_names(self) -> list[str]:
        """The lower-case metric keys evaluation can report for this run (``loss`` included)."""
        names = ["loss", *(m.lower() for m in self.spec.metrics if m != "judge")]
        return names + [metric_key(m) for m in self.all_metrics() if metric_key(m) not in names]

    def best_metric(self) -> str:
        """The lower-case metric that picks the best checkpoint."""
        return metric_key(self.training.metric_for_best or self.prediction.metric)

    @property
    def run_dir(self) -> Path:
        """Where this run's files go."""
        return Path(self.output_directory) / self.experiment_name

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for YAML (tuples become lists)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------------------------
# Loading, overriding, saving


def all_field_paths() -> list[str]:
    """Every valid dotted field path, e.g. ``training.learning_rate``."""
    paths = [name for name in RunConfig.model_fields if name not in SECTIONS]
    for section, model in SECTIONS.items():
        paths += [f"{section}.{name}" for name in model.model_fields]
    return paths + list(dict.fromkeys(f"training.{name}" for _, name, _ in option_fields()))


# Names other tools give our fields (Hugging Face Trainer, PEFT, Axolotl, LLaMA-Factory): not close in spelling.
OTHER_TOOLS_NAMES = {
    "max_grad_norm": "training.gradient_clip",
    "num_train_epochs": "training.epochs",
    "num_epochs": "training.epochs",
    "lr": "training.learning_rate",
    "lr_scheduler_type": "training.schedule",
    "lr_scheduler": "training.schedule",
    "optim": "training.optimizer",
    "per_device_train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accumulation",
    "eval_strategy": "training.eval_steps",
    "evaluation_strategy": "training.eval_steps",
    "metric_for_best_model": "training.metric_for_best",
    "model_name_or_path": "llm_backbone",
    "base_model": "llm_backbone",
}
# How alike (difflib ratio) an unknown name and a field of its section must be to be suggested.
SUGGEST_CUTOFF = 0.75


def _suggest(path: str) -> str:
    """A 'did you mean' for an unknown field path: the same name in another section, another tool's name for a
    field, or the most similar name in the same section (never a look-alike from an unrelated section)."""
    valid = all_field_paths()
    parts = path.split(".")
    leaf, section = parts[-1], parts[0] if len(parts) == 2 else None
    if section is not None and section not in SECTIONS:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=SUGGEST_CUTOFF)
        if close and f"{close[0]}.{leaf}" in valid:
            return f"did you mean '{close[0]}.{leaf}'?"
        if close:
            return f"did you mean section '{close[0]}'?"
    moved = [p for p in valid if p.split(".")[-1] == leaf and p != path]
    if moved:  # a right name in the wrong place
        return f"did you mean '{moved[0]}'?"
    if leaf.lower() in OTHER_TOOLS_NAMES:
        return f"did you mean '{OTHER_TOOLS_NAMES[leaf.lower()]}'?"
    if section in SECTIONS:
        names = [p.split(".", 1)[1] for p in valid if p.startswith(f"{section}.")]
        close = difflib.get_close_matches(leaf, names, n=1, cutoff=SUGGEST_CUTOFF)
        if close:
            return f"did you mean '{section}.{close[0]}'?"
    elif section is None:  # a top-level name: a field, a section, or a section's field written without its section
        top = [p for p in valid if "." not in p] + list(SECTIONS)
        close = difflib.get_close_matches(leaf, top, n=1, cutoff=SUGGEST_CUTOFF)
        close = close or difflib.get_close_matches(leaf, [p for p in valid if "." in p], n=1, cutoff=SUGGEST_CUTOFF)
        leaves = {p.split(".")[-1]: p for p in valid if "." in p}
        close = close or [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=SUGGEST_CUTOFF)]
        if close:
            return f"did you mean '{close[0]}'?"
    where = f"the fields of '{section}'" if section in SECTIONS else "every field"
    return f"see {where} in docs/config.md or 'tunelab config init'"


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML mapping document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = prefix + (str(key.value),)
                lines[path] = key.start_mark.line + 1
                walk(value, path)

    walk(root, ())
    return lines


def _describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """Turn one pydantic error into (dotted path, readable message)."""
    loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
    path = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return path, f"unknown field ({_suggest(path)})"
    if kind == "problem_option":
        return path, err["msg"]
    if kind == "value_error" and not loc:
        return "", err["msg"].removeprefix("Value error, ")
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and kind not in ("missing",):
        message += f", got {err['input']!r}"
    return path, message


def validate_config(data: Any, source: str | None = None, text: str | None = None) -> RunConfig:
    """Validate plain data into a ``RunConfig``, turning every problem into one ``ConfigError``.

    Args:
        data: the parsed mapping.
        source: file name to mention in errors.
        text: the YAML text, used to name the line of the first problem.

    Returns:
        The validated config.

    Raises:
        ConfigError: listing every problem found, with the first one's field and line.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "a config must be a mapping of fields to values", file=source, hint="start from 'tunelab config init'"
        )
    for section in SECTIONS:
        if section in data and data[section] is None:
            data[section] = {}
        elif section in data and not isinstance(data[section], dict):
            raise ConfigError(f"section '{section}' must be a mapping of fields to values", file=source, field=section)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        described = [_describe_error(e) for e in exc.errors()]
        # Cross-field errors arrive as one message, a "path: msg" per line.
        flat: list[tuple[str, str]] = []
        for path, message in described:
            if path:
                flat.append((path, message))
            else:
                for part in message.split("\n"):
                    field, _, msg = part.partition(": ")
                    flat.append((field, msg) if msg else ("", field))
        line_of = _yaml_lines(text) if text else {}
        first_field = flat[0][0]
        line = line_of.get(tuple(first_field.split("."))) if first_field else None
        if len(flat) == 1:
            what = flat[0][1]
        else:
            what = f"{len(flat)} problems: " + "; ".join(
                (
                    f"{p}"
                    + (f" (line {line_of[tuple(p.split('.'))]})" if tuple(p.split(".")) in line_of else "")
                    + f": {m}"
                )
                if p
                else m
                for p, m in flat
            )
        raise ConfigError(what, file=source, line=line, field=first_field or None) from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' is not of the form section.field=value",
            field=item,
            hint="e.g. --set training.learning_rate=2e-4",
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def flatten_fields(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as one level of dotted field names: ``{"training.learning_rate": 1e-4, ...}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.field=value`` strings to plain config data (values parsed as YAML scalars/lists)."""
    for item in overrides or []:
        parts, value = _parse_override(item)
        if len(parts) > 2 or not all(parts):
            raise ConfigError(
                f"override key '{'.'.join(parts)}' must be 'field' or 'section.field'",
                field=".".join(parts),
                hint=_suggest(".".join(parts)),
            )
        target = data
        if len(parts) == 2:
            section = parts[0]
            if section not in SECTIONS:
                raise ConfigError(f"unknown section '{section}'", field=".".join(parts), hint=_suggest(".".join(parts)))
            target = data.setdefault(section, {}) or {}
            data[section] = target
        target[parts[-1]] = value
    return data


def prediction_overrides(overrides: list[str] | None) -> list[str]:
    """``--set`` overrides for a trained run: how it answers (``prediction.*``) may change, not what it is.

    Raises:
        ConfigError: for an override of any other section.
    """
    for item in overrides or []:
        parts, _ = _parse_override(item)
        if len(parts) != 2 or parts[0].strip() != "prediction":
            raise ConfigError(
                f"only prediction settings can change for a trained run, not '{'.'.join(parts)}'",
                field=".".join(parts),
                hint="use --set prediction.FIELD=VALUE (e.g. prediction.temperature=0.7); retrain to change the rest",
            )
    return list(overrides or [])


def read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a YAML config file, returning its data and text.

    Raises:
        ConfigError: when the file is missing or is not valid YAML.
    """
    path = Path(path)
    if not path.exists() and path.is_symlink():
        raise ConfigError(
            "the config file is a symbolic link that leads nowhere (a loop, or a missing target)", file=str(path)
        )
    if not path.is_file():
        raise ConfigError(
            "config file not found", file=str(path), hint="check the path, or create one with 'tunelab config init'"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML ({getattr(exc, 'problem', exc)})",
            file=str(path),
            line=None if mark is None else mark.line + 1,
        ) from None
    return (data if data is not None else {}), text


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """Load a config from YAML (or start from ``base``), apply ``--set`` overrides and validate.

    Args:
        path: a YAML file, or None to start from ``base`` / the defaults.
        overrides: ``section.field=value`` strings.
        base: plain data to start from when ``path`` is None.

    Returns:
        The validated config.

    Raises:
        ConfigError: on a missing file, invalid YAML, unknown fields or invalid values.
    """
    text = None
    if path is not None:
        data, text = read_yaml(path)
    else:
        data = dict(base or {})
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of fields to values", file=None if path is None else str(path))
    data = apply_overrides(data, overrides)
    return validate_config(data, source=None if path is None else str(path), text=text)


def dump_yaml(data: Any) -> str:
    """YAML text for plain data, keys in schema order."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically."""
    from tunelab.io import write_text_atomic

    write_text_atomic(path, dump_yaml(cfg.to_dict()))


def _fields_of(model: type[BaseModel]) -> list[tuple[str, Any]]:
    return [(name, f) for name, f in model.model_fields.items() if name not in SECTIONS]


def commented_yaml(cfg: RunConfig) -> str:
    """The config as YAML with every field's description as a comment above it."""
    data = cfg.to_dict()
    out = [
        "# tunelab run configuration. Every field is optional except dataset.train_dataframe.",
        "# Full reference: docs/config.md",
        "",
    ]

    def emit(name: str, field: Any, value: Any, indent: str) -> None:
        for line in _wrap(field.description or "", 116 - len(indent)):
            out.append(f"{indent}# {line}")
        rendered = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000).strip()
        out.append(f"{indent}{rendered[1:-1]}")

    for name, field in _fields_of(RunConfig):
        emit(name, field, data[name], "")
    for section, model in SECTIONS.items():
        out += ["", f"# {RunConfig.model_fields[section].description}", f"{section}:"]
        for name, field in model.model_fields.items():
            emit(name, field, data[section][name], "  ")
        if section == "training" and cfg.spec.options is not None:  # the problem type's own fields
            for name, field in cfg.spec.options.model_fields.items():
                emit(name, field, data[section][name], "  ")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def config_reference_markdown() -> str:
    """``docs/config.md``: every field, its default, bounds and description."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the field descriptions in `src/tunelab/config.py` by `tunelab config docs`. "
        "Do not edit by hand.",
        "",
        "Set fields in a YAML file (sections as nested mappings) or on the command line with "
        "`--set section.field=value`.",
        "",
    ]

    def table(model: type[BaseModel], prefix: str) -> None:
        lines.extend(["| field | default | allowed | description |", "|---|---|---|---|"])
        rows = [(name, field, "") for name, field in _fields_of(model)]
        if prefix == "training.":  # each problem type's own fields (ProblemSpec.options), marked with their type
            rows += [(name, field, f"(problem_type: {owner}) ") for owner, name, field in option_fields()]
        for name, field, owner in rows:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, tuple):
                default = list(default)
            # problem_type is a plain str checked against the problem-type registry: list what is registered.
            allowed = " \\| ".join(problem_types()) if f"{prefix}{name}" == "problem_type" else _allowed(field)
            desc = (owner + (field.description or "")).replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | `{default!r}` | {allowed} | {desc} |")
        lines.append("")

    lines += ["## Top level", ""]
    table(RunConfig, "")
    for section, model in SECTIONS.items():
        lines += [f"## {section}", "", RunConfig.model_fields[section].description or "", ""]
        table(model, f"{section}.")
    return "\n".join(lines)


def _type_text(ann: Any) -> str:
    """A short human name of a type annotation: 'a \\| b' for literals, 'list of str' for tuples."""
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_text(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type_text(args[0])}"
    return getattr(ann, "__name__", str(ann))


def _allowed(field: Any) -> str:
    """A short text of a field's type and bounds."""
    text = _type_text(field.annotation)
    bounds = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("min_length", "at least")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sym} {value}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")
