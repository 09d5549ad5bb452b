"""What gets trained. The only module that talks to peft.

Methods (``training.adapter``):

- peft methods, saved in peft's format (``adapter/``): lora (with DoRA / rsLoRA), ia3, prefix_tuning, prompt_tuning,
  ln_tuning;
- selective methods, saved as the trained tensors (``partial/``): bitfit (biases), freeze (last N layers and/or name
  patterns), head_only (the output head);
- none: every weight (full fine-tune, saved as a transformers model in ``model/``).

A classification head always trains. A method that does not fit the backbone or problem is refused with a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.io import atomic_dir, write_json_atomic
from tunelab.models.heads import backbone_linear_names, classification_head, head_parameter_names
from tunelab.rundir import RunDirectory

PEFT_METHODS = ("lora", "ia3", "prefix_tuning", "prompt_tuning", "ln_tuning")
PARTIAL_METHODS = ("bitfit", "freeze", "head_only")


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)

    def describe(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.share:.3f}%)"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Trainable and total parameters, counting tied weights once (4-bit weights count their real size)."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel() * (2 if getattr(param, "quant_type", None) else 1)  # packed 4-bit: 2 values per byte
        total += n
        if param.requires_grad:
            trainable += n
    return ParameterCount(trainable, total)


def is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_prompt_learning(model: Any) -> bool:
    """Whether the model adds soft tokens (prefix/prompt tuning): its forward differs from the backbone's."""
    return is_peft_model(model) and model.active_peft_config.is_prompt_learning


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the same object when there is none)."""
    return model.get_base_model() if is_peft_model(model) else model


def target_modules(spec: str) -> str | list[str] | None:
    """peft's target_modules from ``lora_target_modules``: None (default), 'all-linear', a regex, or names."""
    spec = spec.strip()
    if not spec:
        return None
    if spec == "all-linear" or any(ch in spec for ch in "*()[]|^$\\+?"):
        return spec  # peft full-matches a string against module names
    return [n.strip() for n in spec.split(",") if n.strip()]


def default_lora_targets(model: Any) -> str | list[str]:
    """LoRA's default targets: every linear layer of the backbone, as a regular expression peft full-matches.

    The expression names the backbone and the layers' own names (``model\\.(?:.*\\.)?(?:q_proj|...)``), so the
    saved adapter config stays short on any model size; when such an expression would also catch a module that is
    not one of these layers (a head module sharing a name), the full names are listed instead.
    """
    names = backbone_linear_names(model)
    prefixes = sorted({n.split(".")[0] for n in names if "." in n})
    leaves = sorted({n.split(".")[-1] for n in names})
    if len(prefixes) == 1 and all(n.startswith(prefixes[0] + ".") for n in names):
        pattern = rf"{re.escape(prefixes[0])}\.(?:.*\.)?(?:{'|'.join(map(re.escape, leaves))})"
        matched = {key for key, _ in model.named_modules() if re.fullmatch(pattern, key)}
        if matched == set(names):
            return pattern
    return sorted(names)


def _all_conv1d(model: Any) -> bool:
    """Whether every default LoRA target is a transformers Conv1D (GPT-2 and its relatives)."""
    from transformers.pytorch_utils import Conv1D

    return all(isinstance(model.get_submodule(name), Conv1D) for name in backbone_linear_names(model))


def _peft_config(cfg: RunConfig, task: Any, model: Any, head: list[str]) -> Any:
    import peft

    t = cfg.training
    targets = target_modules(t.lora_target_modules)
    save = head or None  # the classification head trains in full beside the adapter
    if t.adapter == "lora":
        default = targets in (None, "all-linear")
        return peft.LoraConfig(
            r=t.lora_r,
            lora_alpha=t.lora_alpha,
            lora_dropout=t.lora_dropout,
            target_modules=default_lora_targets(model) if default else targets,
            fan_in_fan_out=default and _all_conv1d(model),  # GPT-2's Conv1D stores weights as [in, out]
            use_dora=t.use_dora,
            use_rslora=t.use_rslora,
            task_type=task,
            modules_to_save=save,
        )
    if t.adapter == "ia3":
        return peft.IA3Config(target_modules=targets, task_type=task, modules_to_save=save)
    if t.adapter == "prefix_tuning":
        return peft.PrefixTuningConfig(num_virtual_tokens=t.num_virtual_tokens, task_type=task, modules_to_save=save)
    if t.adapter == "prompt_tuning":
        return peft.PromptTuningConfig(num_virtual_tokens=t.num_virtual_tokens, task_type=task, modules_to_save=save)
    return peft.LNTuningConfig(task_type=task, target_modules=norm_module_names(model), modules_to_save=save)


def norm_module_names(model: Any) -> list[str]:
    """The names (last components) of the backbone's normalisation layers: LN tuning's targets on any architecture."""
    return sorted(
        {name.split(".")[-1] for name, module in model.named_modules() if "Norm" in type(module).__name__ and name}
    )


def apply_adapter(model: Any, cfg: RunConfig) -> Any:
    """Set which parameters train, per ``training.adapter``.

    Returns:
        The model to train (a peft model for the peft methods).

    Raises:
        ConfigError: when the method does not fit this backbone or problem type.
    """
    method = cfg.training.adapter
    classification = not cfg.spec.generative  # a new head on top (classification, regression, reward)
    if method == "none":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method in PARTIAL_METHODS:
        for param in model.parameters():
            param.requires_grad_(False)
        selected = _partial_selection(model, cfg)
        if classification:
            selected |= head_parameter_names(model, cfg.problem_type)
        params = dict(model.named_parameters())
        for name in selected:
            params[name].requires_grad_(True)
        return model
    from peft import TaskType, get_peft_model

    task = TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM
    head = sorted(classification_head(model)) if classification else []
    try:
        wrapped = get_peft_model(model, _peft_config(cfg, task, model, head))
    except (ValueError, TypeError, NotImplementedError, AttributeError) as exc:
        raise ConfigError(
            f"{method} cannot adapt this backbone ({str(exc).splitlines()[0]})",
            field="training.lora_target_modules" if method in ("lora", "ia3") else "training.adapter",
            hint=_adapter_hint(method, model, cfg.training.lora_target_modules),
        ) from exc
    return wrapped


def _adapter_hint(method: str, model: Any, targets: str) -> str:
    """What to try instead, in this backbone's own module names."""
    leaves = sorted({name.split(".")[-1] for name in backbone_linear_names(model)})
    names = ",".join(leaves[:4])
    if method == "ia3":
        return f"name the modules ia3 scales, from this backbone's linear layers: {', '.join(leaves)}"
    if method == "lora" and targets.strip():
        return f"leave lora_target_modules empty (every linear layer of the backbone) or name some, e.g. {names}"
    return "use lora, which adapts any backbone's linear layers"


def transformer_layers(model: Any) -> torch.nn.ModuleList:
    """The backbone's list of transformer blocks (the ModuleList as long as config.num_hidden_layers)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(
        "cannot find this backbone's transformer layers",
        field="training.trainable_layers",
        hint="use trainable_patterns instead",
    )


def _partial_selection(model: Any, cfg: RunConfig) -> set[str]:
    """Names of the parameters a selective method trains (before the classification head is added)."""
    t = cfg.training
    names = [name for name, _ in model.named_parameters()]
    if t.adapter == "head_only":
        return head_parameter_names(model, cfg.problem_type)
    if t.adapter == "bitfit":
        head = set() if cfg.spec.generative else head_parameter_names(model, cfg.problem_type)
        biases = {n for n in names if n.endswith(".bias") and n not in head}
        if not biases:
            raise ConfigError(
                "bitfit trains biases, and this backbone has none",
                field="training.adapter",
                hint="use lora or ln_tuning for this backbone",
            )
        return biases
    selected: set[str] = set()
    if t.trainable_layers:
        layers = transformer_layers(model)
        keep = {id(p) for layer in list(layers)[-t.trainable_layers :] for p in layer.parameters()}
        selected |= {name for name, p in model.named_parameters() if id(p) in keep}
    for pattern in (p.strip() for p in t.trainable_patterns.split(",") if p.strip()):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"not a regular expression ({exc})", field="training.trainable_patterns") from None
        matched = {n for n in names if regex.search(n)}
        if not matched:
            raise ConfigError(
                f"pattern '{pattern}' matches no parameter",
                field="training.trainable_patterns",
                hint=f"parameter names look like {names[len(names) // 2]}",
            )
        selected |= matched
    return selected


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (for partial runs, checkpoints and best-checkpoint snapshots)."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def model_dir_name(method: str) -> str:
    """The run-directory folder that holds what a method trained."""
    return "adapter" if method in PEFT_METHODS else "model" if method == "none" else "partial"


def save_trained(model: Any, run_model_dir: Path, method: str) -> None:
    """Save what was trained: a peft adapter, the full model, or the trained tensors.

    ``run_model_dir`` is a fresh folder; callers rename it into place.
    """
    from safetensors.torch import save_file

    run_model_dir.mkdir(parents=True, exist_ok=True)
    if method in PEFT_METHODS or method == "none":
        model.save_pretrained(run_model_dir)  # peft adapter format / full transformers model
    else:
        state = {name: t.contiguous() for name, t in trainable_state(model).items()}
        save_file(state, str(run_model_dir / "trained_weights.safetensors"))


def save_to_run(run: RunDirectory, model: Any, tokenizer: Any, method: str) -> Path:
    """Save the trained weights and the tokenizer into the run directory; each folder appears whole or not at all.

    The weights' folder carries the tokenizer too, and a peft adapter names its base model by hub id, so the folder
    loads on its own (``AutoPeftModelForCausalLM.from_pretrained(adapter)``).

    Returns:
        The weights' folder (``adapter/``, ``model/`` or ``partial/``).
    """
    target = run.path / model_dir_name(method)
    with atomic_dir(target) as staging:
        save_trained(model, staging, method)
        # Portable weights: the tokenizer (chat template included) beside them, a peft adapter's base named by hub id.
        tokenizer.save_pretrained(staging)
        if method in PEFT_METHODS:
            point_adapter_at_base(staging, run.config().llm_backbone)
    with atomic_dir(run.tokenizer_dir) as staging:
        tokenizer.save_pretrained(staging)
    return target


def point_adapter_at_base(adapter_dir: Path, backbone: str) -> None:
    """Name the base model in a saved peft adapter's ``adapter_config.json`` the way other machines know it, so
    ``AutoPeftModel*.from_pretrained(adapter_dir)`` finds it anywhere.

    peft records the folder the base was loaded from, which for a built-in backbone is a cache or site-packages path
    on this machine. ``base_model_name_or_path`` becomes the hub id (a built-in's real one; a hub id without
    tunelab's ``@revision``, which goes to ``revision``) or the absolute path of a local folder. A GGUF file or a
    run as backbone keeps the converted / merged folder peft recorded: only this machine has that base.
    tunelab never reads this field: it loads the base that the run's config names.
    """
    from tunelab.models.load import base_model_reference

    path = Path(adapter_dir) / "adapter_config.json"
    ref = base_model_reference(backbone)
    if not path.is_file() or ref.kind in ("gguf", "run"):
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = ref.name
    config["revision"] = ref.revision
    write_json_atomic(path, config)


def load_trained(base: Any, run_model_dir: Path, method: str) -> Any:
    """Put a run's trained weights onto a freshly loaded backbone (inverse of ``save_trained``)."""
    if method in PEFT_METHODS:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(run_model_dir))
    if method in PARTIAL_METHODS:
        from safetensors.torch import load_file

        state = load_file(str(run_model_dir / "trained_weights.safetensors"))
        missing = set(state) - {name for name, _ in base.named_parameters()}
        if missing:
            raise ConfigError(f"saved weights do not fit the backbone: {sorted(missing)[:3]}", file=str(run_model_dir))
        base.load_state_dict(state, strict=False)
        return base
    return base  # "none": the full model was loaded from run_model_dir itself
