"""Exports of a run: the adapter, a merged transformers model, or a GGUF file — each with a model card and a parity
check against the trained model.

Merging always happens on a full-precision backbone: a QLoRA run's base is loaded in 16/32-bit, the adapter merged
into it, and the result saved. Weights are never merged into quantised ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.interrupts import StopOnSignal, StopSignal
from tunelab.io import atomic_dir, write_json_atomic, write_text_atomic
from tunelab.models.adapters import is_peft_model, is_prompt_learning, point_adapter_at_base
from tunelab.models.load import base_model_reference
from tunelab.rundir import RunDirectory

FORMATS = ("adapter", "merged", "gguf")
PARITY_PROMPTS = 8
PARITY_NEW_TOKENS = 24


class ExportError(TunelabError):
    """An export that cannot be made from this run."""


def parity_examples(loaded: Any) -> list[dict[str, Any]]:
    """Up to 8 validation examples of the run (re-read from its data, else taken from its predictions CSV)."""
    from tunelab.data.pipeline import validation_data

    try:
        _, examples = validation_data(loaded.cfg, loaded.problem)
    except TunelabError:
        import csv

        path = loaded.run.path / "validation_predictions.csv"
        with open(path, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        key = "messages" if loaded.cfg.spec.generative else "text"
        examples = [
            {key: r["prompt"]} if key == "text" else {key: [{"role": "user", "content": r["prompt"]}]} for r in rows
        ]
    return examples[:PARITY_PROMPTS]


@torch.inference_mode()
def model_outputs(model: Any, loaded: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """What parity compares: greedy answers and prompt logits (causal LM), or class probabilities."""
    problem = loaded.problem
    if not loaded.cfg.spec.generative:
        return {"predictions": problem.predict(model, examples)}
    from tunelab.generation.generate import generate_batched

    prompts = problem.prompt_ids(examples)
    settings = loaded.cfg.prediction.model_copy(
        update={
            "do_sample": False,
            "num_beams": 1,
            "min_length_inference": 0,
            "max_length_inference": PARITY_NEW_TOKENS,
        }
    )
    answers = generate_batched(model, loaded.tokenizer, prompts, settings, batch_size=len(prompts))
    device = next(model.parameters()).device
    logits = [model(input_ids=torch.tensor([p], device=device)).logits[0, -1].float().cpu() for p in prompts]
    return {"answers": answers, "prompts": prompts, "logits": torch.stack(logits)}


def compare_outputs(reference: dict[str, Any], exported: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Parity of two models' outputs: greedy answers must match, or logits agree within ``tolerance``."""
    if "predictions" in reference:
        # Labels (classes, the preferred answer) must match; numbers (probabilities, rewards, values) agree.
        pairs = list(zip(reference["predictions"], exported["predictions"]))
        labels = all(
            {k: v for k, v in r.items() if not isinstance(v, float)}
            == {k: v for k, v in e.items() if not isinstance(v, float)}
            for r, e in pairs
        )
        diff = max((abs(r[k] - e[k]) for r, e in pairs for k in r if isinstance(r[k], float)), default=0.0)
        return {
            "prompts": len(pairs),
            "labels_match": labels,
            "max_abs_prob_diff": diff,
            "passed": labels and diff <= tolerance,
        }
    same = [a == b for a, b in zip(reference["answers"], exported["answers"])]
    diff = float((reference["logits"] - exported["logits"]).abs().max())
    top1 = float((reference["logits"].argmax(-1) == exported["logits"].argmax(-1)).float().mean())
    return {
        "prompts": len(same),
        "greedy_matches": sum(same),
        "max_abs_logit_diff": diff,
        "top1_agreement": top1,
        "tolerance": tolerance,
        "passed": all(same) or (diff <= tolerance and top1 == 1.0),
    }


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    dtype: str = "float32",
    quant: str = "q8_0",
    force: bool = False,
    console: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Export a finished run and check it against the trained model (see ``_export_run``).

    SIGTERM / SIGINT stop it within seconds, removing the half-written export folder.

    Raises:
        ExportError: for a format this run cannot be exported to, or on SIGTERM / SIGINT (exit code 143 / 130).
    """
    with StopOnSignal():
        try:
            return _export_run(run_dir, fmt, out, dtype, quant, force, console)
        except StopSignal as stop:
            error = ExportError(
                f"export stopped by {stop.name} before it was complete; its temporary folder was removed",
                file=str(run_dir),
                hint="run the export again",
            )
            error.exit_code = stop.exit_code
            raise error from None


def _export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    dtype: str = "float32",
    quant: str = "q8_0",
    force: bool = False,
    console: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Export a finished run and check it against the trained model.

    Args:
        run_dir: the run directory.
        fmt: "adapter", "merged" or "gguf".
        out: the export folder (default ``RUN_DIR/exports/<fmt>``).
        dtype: weight dtype of a merged export (float32, float16, bfloat16).
        quant: GGUF tensor type (one of ``gguf_export.QUANTS``: f32, f16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k).
        force: replace an existing export folder.
        console: where progress lines go.

    Returns:
        (the export folder, the parity result).

    Raises:
        ExportError: for a format this run cannot be exported to.
    """
    from tunelab.infer.model import load_run

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'", hint=f"use one of {', '.join(FORMATS)}")
    if fmt == "gguf":
        from tunelab.infer.gguf_export import LLAMA_CPP_QUANTS, llama_cpp_quantizer, normalize_quant

        quant = normalize_quant(quant)
        if quant in LLAMA_CPP_QUANTS:
            llama_cpp_quantizer()  # a missing quantizer stops here, before minutes of merging
    run = RunDirectory.open(run_dir)
    target = Path(out) if out else run.path / "exports" / (fmt if fmt != "gguf" else f"gguf-{quant}")
    if target.exists() and any(target.iterdir()) and not force:
        raise ExportError("the export folder already exists", file=str(target), hint="pass --force to replace it")
    loaded = load_run(run.path, device="cpu", full_precision=True)
    if fmt != "adapter" and is_prompt_learning(loaded.model):
        raise ExportError(
            f"a {loaded.cfg.training.adapter} run adds soft tokens and cannot be merged into weights",
            hint="export it with --format adapter",
        )
    if fmt not in loaded.cfg.spec.exports:
        what = "GGUF export is for causal language models" if fmt == "gguf" else f"{fmt} export"
        raise ExportError(
            f"{what}: a {loaded.cfg.problem_type} run exports as {', '.join(loaded.cfg.spec.exports)}",
            hint=f"use --format {loaded.cfg.spec.exports[-1]}",
        )
    if fmt == "gguf":
        from tunelab.infer.gguf_export import check_model_type

        check_model_type(getattr(loaded.model.config, "model_type", None))  # before any merging work
    loaded.model.float()
    examples = parity_examples(loaded)
    reference = model_outputs(loaded.model, loaded, examples)
    with atomic_dir(target) as staging:
        parity = _write(fmt, loaded, staging, dtype, quant, examples, reference)
        write_json_atomic(staging / "parity.json", parity)
        write_text_atomic(staging / "README.md", model_card(run, loaded, fmt, parity, dtype, quant))
    return target, parity


def _write(
    fmt: str,
    loaded: Any,
    folder: Path,
    dtype: str,
    quant: str,
    examples: list[dict[str, Any]],
    reference: dict[str, Any],
) -> dict[str, Any]:
    """Write the export into ``folder`` and return its parity result."""
    from tunelab.infer.model import load_run

    if fmt == "adapter":
        shutil.copytree(loaded.run.model_dir, folder, dirs_exist_ok=True)
        loaded.tokenizer.save_pretrained(folder)
        point_adapter_at_base(folder, loaded.cfg.llm_backbone)  # runs saved before adapters named their base by hub id
        again = load_run(loaded.run.path, device="cpu", full_precision=True)
        return compare_outputs(reference, model_outputs(again.model.float(), again, examples), 1e-5)
    merged = loaded.model.merge_and_unload() if is_peft_model(loaded.model) else loaded.model
    merged = merged.to(getattr(torch, dtype))
    target = folder if fmt == "merged" else folder / ".merged"
    merged.save_pretrained(target)
    name_base_in_config(target, loaded.cfg.llm_backbone)
    loaded.tokenizer.save_pretrained(target)
    if fmt == "merged":
        fresh = loaded.problem.auto_class().from_pretrained(target, dtype=torch.float32)
        tolerance = 1e-4 if dtype == "float32" else 0.25
        return compare_outputs(reference, model_outputs(fresh.eval(), loaded, examples), tolerance)
    from tunelab.infer.gguf_export import compare_with_gguf, export_gguf

    gguf_path = export_gguf(target, folder / f"model-{quant}.gguf", quant=quant)
    result = compare_with_gguf(target, gguf_path, reference["prompts"])
    shutil.rmtree(target)
    result.update(gguf_parity_verdict(quant, result))
    if not result["passed"]:
        # Kept for inspection, under a name nobody mistakes for a good export.
        failed = gguf_path.with_name(f"{gguf_path.stem}.PARITY-FAILED.gguf")
        gguf_path.rename(failed)
        gguf_path = failed
    from tunelab.infer.ollama import modelfile

    write_text_atomic(
        folder / "Modelfile",
        modelfile(gguf_path.name, loaded.tokenizer, loaded.cfg.prediction, ollama_context(loaded)),
    )
    result["file"] = gguf_path.name
    return result


def ollama_context(loaded: Any) -> int:
    """``num_ctx`` for Ollama: the model's own context, capped at 4,096 tokens (Ollama allocates the whole KV cache
    up front), and never below the length the run trained on."""
    model_context = getattr(loaded.model.config, "max_position_embeddings", None) or loaded.cfg.tokenizer.max_length
    return max(loaded.cfg.tokenizer.max_length, min(int(model_context), 4096))


# Parity of a GGUF export with the trained model, judged per tensor type as llama.cpp judges quantisations: the
# KL divergence of the export's next-token distribution from the original's (mean over every prompt position) and
# how often both pick the same top token. f32 and f16 must be near-exact (f32 also answers greedily the same); the
# quantised types lose precision by design. Their bounds hold what llama.cpp's own quantizer makes of an exact f32
# conversion (q8_0 and q4_0 files here are byte-identical to it, the k-quants are made by it), measured on
# SmolLM2-135M, a small model that quantisation hurts more than large ones, inside llama.cpp and in this check
# (docs/gguf.md); a conversion bug is far outside them (Q/K rows in the wrong RoPE order: mean KLD 1.2, top-1 0.55).
GGUF_PARITY = {
    "f32": {"max_mean_kld": 1e-5, "min_top1": 0.99, "greedy": True},
    "f16": {"max_mean_kld": 1e-4, "min_top1": 0.99, "greedy": False},
    "q8_0": {"max_mean_kld": 1e-2, "min_top1": 0.95, "greedy": False},
    "q6_k": {"max_mean_kld": 2e-2, "min_top1": 0.93, "greedy": False},
    "q5_k_m": {"max_mean_kld": 5e-2, "min_top1": 0.90, "greedy": False},
    "q4_k_m": {"max_mean_kld": 1e-1, "min_top1": 0.88, "greedy": False},
    "q4_0": {"max_mean_kld": 1e-1, "min_top1": 0.88, "greedy": False},
}


def gguf_parity_verdict(quant: str, measured: dict[str, Any]) -> dict[str, Any]:
    """The criteria of ``quant`` (``GGUF_PARITY``) and whether ``measured`` (from ``compare_with_gguf``) meets them."""
    criteria = GGUF_PARITY[quant]
    passed = measured["mean_kld"] <= criteria["max_mean_kld"] and measured["top1_agreement"] >= criteria["min_top1"]
    if criteria["greedy"]:
        passed = passed and measured["greedy_match"]
    return {"criteria": criteria, "passed": bool(passed)}


def model_card(run: RunDirectory, loaded: Any, fmt: str, parity: dict[str, Any], dtype: str, quant: str) -> str:
    """The export's README.md (see ``tunelab.infer.model_card``)."""
    from tunelab.infer.model_card import build_model_card

    name = {"adapter": run.model_dir.name if run.model_dir else "adapter", "merged": "merged"}.get(fmt, f"gguf-{quant}")
    return build_model_card(
        run,
        fmt,
        folder_name=name,
        problem=loaded.problem,
        parity=parity,
        dtype=dtype,
        gguf_file=parity.get("file") if fmt == "gguf" else None,
        quant=quant,
    )


def name_base_in_config(folder: Path, backbone: str) -> None:
    """Name the base model in a merged export's config.json the way others know it: ``_name_or_path`` is its hub
    id (transformers leaves it out), peft's ``base_model_name_or_path`` says the same instead of a cache path, and
    the name a GGUF backbone's metadata left there (``_model_name_or_path``) goes. A base only this machine has is
    named by its absolute path in ``base_model_name_or_path`` only."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("_model_name_or_path", None)
    ref = base_model_reference(backbone)
    if "base_model_name_or_path" in config:
        config["base_model_name_or_path"] = ref.name
    if not ref.local:
        config = {"_name_or_path": ref.name, **config}
    write_json_atomic(path, config)


def push_export(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an export folder to the Hugging Face hub.

    Raises:
        ExportError: when offline, not logged in, or the upload fails.
    """
    import os

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise ExportError(
            "not an export folder (no README.md model card)",
            file=str(folder),
            hint="run 'tunelab export RUN_DIR --format merged' first",
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ExportError("cannot push: offline mode is on (HF_HUB_OFFLINE=1)", hint="push from a machine online")
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:  # network, auth and hub errors all end here
        raise ExportError(
            f"could not push to the hub ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            hint="check the network and 'huggingface-cli login'",
        ) from None
    return str(getattr(commit, "commit_url", repo_id))
