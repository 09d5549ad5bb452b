"""The "Use it" section of a model card: working load code for the folder it lies in — transformers and peft for
weights, llama.cpp and Ollama for a GGUF file — with the run's real file names, classes and an example prompt."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from tunelab.models.adapters import PEFT_METHODS


def usage_text(fmt: str, folder: str, problem: Any, facts: dict[str, Any], gguf_file: str, prompt: str) -> str:
    """The section's markdown.

    Args:
        fmt: "adapter" (the run's trained weights as saved), "merged" or "gguf".
        folder: the folder the card lies in, as the code names it.
        problem: the run's problem object.
        facts: the card's facts (``cfg``, ``ref``, ``auto_class``).
        gguf_file: the GGUF file's name.
        prompt: an example input (the run's first validation prompt).
    """
    cfg, ref, auto_class = facts["cfg"], facts["ref"], facts["auto_class"]
    generative = auto_class == "AutoModelForCausalLM"
    if fmt == "gguf":
        return _gguf_usage(cfg, problem, gguf_file, prompt)
    method = cfg.training.adapter
    peft_adapter = fmt == "adapter" and method in PEFT_METHODS
    if peft_adapter:
        peft_class = auto_class.replace("AutoModel", "AutoPeftModel")
        head = f"from peft import {peft_class}\nfrom transformers import AutoTokenizer\n\n"
        load = f'model = {peft_class}.from_pretrained("{folder}"{_kwargs(problem)})  # or the hub repo id'
        template = ", with the chat template used in training," if _has_chat_template(problem) else ""
        intro = (
            f"The adapter names its base model (`{ref.name}`) in `adapter_config.json`; peft loads that base and "
            f"puts the adapter on it. The tokenizer{template} is in this folder.\n"
        )
    elif fmt == "adapter" and method != "none":
        head = f"from safetensors.torch import load_file\nfrom transformers import {auto_class}, AutoTokenizer\n\n"
        load = (
            f'model = {auto_class}.from_pretrained("{ref.name}"{_kwargs(problem)})\n'
            f'model.load_state_dict(load_file("{folder}/trained_weights.safetensors"), strict=False)'
        )
        intro = f"`trained_weights.safetensors` holds the tensors {method} trained; they replace the base model's.\n"
    else:
        head = f"from transformers import {auto_class}, AutoTokenizer\n\n"
        load = f'model = {auto_class}.from_pretrained("{folder}")  # or the hub repo id'
        template = " and chat template" if _has_chat_template(problem) else ""
        intro = f"A plain transformers model folder, tokenizer{template} included.\n"
    code = head + load + f'\ntokenizer = AutoTokenizer.from_pretrained("{folder}")\n'
    code += _generate_code(cfg, problem, prompt) if generative else _score_code(problem, prompt)
    text = "## Use it\n\n" + intro + "\n```python\n" + code + "```\n"
    if peft_adapter and generative:
        text += f'\nWith peft installed, transformers loads it too: `{auto_class}.from_pretrained("{folder}")`.\n'
    if fmt == "adapter":
        commands = "`tunelab chat RUN_DIR` / `tunelab predict RUN_DIR`" if generative else "`tunelab predict RUN_DIR`"
        text += f"\nFrom the run directory it came from, tunelab uses it with {commands}.\n"
    return text


def _kwargs(problem: Any) -> str:
    """The extra from_pretrained arguments a head needs (number of labels, their names)."""
    kwargs = {k: v for k, v in problem.model_kwargs().items() if k != "pad_token_id"}
    return "".join(f", {k}={v!r}" for k, v in kwargs.items())


def _messages(cfg: Any, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": cfg.dataset.system_prompt}] if cfg.dataset.system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def _has_chat_template(problem: Any) -> bool:
    """Whether training rendered prompts with the tokenizer's chat template."""
    uses = problem.cfg.dataset.use_chat_template is not False
    return uses and bool(getattr(problem.tokenizer, "chat_template", None))


def _rendered_prompt(problem: Any, cfg: Any, prompt: str) -> str:
    """The example prompt rendered the way training rendered prompts (for a run without a chat template)."""
    try:
        ids = problem.prompt_ids([{"messages": _messages(cfg, prompt)}])[0]
        return problem.tokenizer.decode(ids)
    except Exception:  # a problem type without prompt rendering: the raw text is the prompt
        return prompt


def _generate_code(cfg: Any, problem: Any, prompt: str) -> str:
    new_tokens = cfg.prediction.max_length_inference
    if _has_chat_template(problem):
        build = (
            f"messages = {json.dumps(_messages(cfg, prompt), ensure_ascii=False)}\n"
            "inputs = tokenizer.apply_chat_template(\n"
            '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n)\n'
        )
    else:
        build = (
            f"prompt = {_rendered_prompt(problem, cfg, prompt)!r}  # rendered as in training\n"
            'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)\n'
        )
    return (
        build
        + f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=False)\n"
        + 'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))\n'
    )


def _score_code(problem: Any, prompt: str) -> str:
    code = f'inputs = tokenizer({prompt!r}, return_tensors="pt")\nlogits = model(**inputs).logits[0]\n'
    stats = getattr(problem, "target_stats", None)
    if stats is not None:  # regression: trained on standardised targets
        mean, std = stats
        return code + f"print(logits[0].item() * {std!r} + {mean!r})  # back on the data's scale\n"
    if getattr(problem, "classes", None):
        if getattr(problem, "multi_label", False):
            return code + "print([model.config.id2label[i] for i, p in enumerate(logits.sigmoid()) if p > 0.5])\n"
        return code + "print(model.config.id2label[int(logits.argmax())], logits.softmax(-1).tolist())\n"
    return code + "print(logits[0].item())  # the score\n"


def _gguf_usage(cfg: Any, problem: Any, gguf_file: str, prompt: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", cfg.experiment_name.lower()).strip("-.") or "tunelab-model"
    new_tokens = cfg.prediction.max_length_inference
    if _has_chat_template(problem):
        cli = f"llama-cli -m {gguf_file} -cnv            # chat in the terminal (the chat template is in the file)"
    else:
        rendered = _rendered_prompt(problem, cfg, prompt)
        cli = f"llama-cli -m {gguf_file} -no-cnv -n {new_tokens} -p {shlex.quote(rendered)}"
    return (
        "## Use it\n\n"
        "With [llama.cpp](https://github.com/ggml-org/llama.cpp):\n\n```bash\n"
        f"{cli}\n"
        f"llama-server -m {gguf_file} --port 8080   # OpenAI-compatible server on http://localhost:8080/v1\n"
        "```\n\n"
        "With [Ollama](https://ollama.com), from this folder (the `Modelfile` beside the GGUF file names it, with "
        "the chat template, stop tokens and parameters):\n\n```bash\n"
        f"ollama create {name} -f Modelfile\nollama run {name}\n```\n"
    )
