"""GGUF parity inside llama.cpp itself: each export type of a run against the trained model in transformers.

For every GGUF type asked for, the run is exported with ``tunelab export --format gguf`` (which runs tunelab's own
parity check through transformers' GGUF reader), then the file is loaded in llama.cpp (llama-cpp-python) and fed
the same token ids as the float32 transformers model (the merged run, with the run's chat template applied to its
validation prompts). Printed per type: KL divergence of llama.cpp's next-token distribution from transformers'
over every prompt position (mean, 99th percentile, max), top-1 agreement, max |Δlogit|, and greedy answers
(up to ``--new-tokens``, stopping at end-of-sequence) identical to transformers' out of the prompts.

    python bench/gguf_parity.py output/quickstart --quants f32,f16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k

Needs llama-cpp-python (``pip install 'tunelab[gguf]'``, which compiles llama.cpp: ~10 minutes on 2 cores).
The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def reference(run_dir: Path, prompts_n: int, new_tokens: int):
    """The merged float32 model's prompt logits and greedy answers (transformers), and the prompts' token ids."""
    from tunelab.infer.export import parity_examples
    from tunelab.infer.model import load_run
    from tunelab.models.adapters import is_peft_model

    loaded = load_run(run_dir, device="cpu", full_precision=True)
    model = loaded.model.float()
    model = model.merge_and_unload() if is_peft_model(model) else model
    model.eval()
    prompts = loaded.problem.prompt_ids(parity_examples(loaded))[:prompts_n]
    eos = loaded.tokenizer.eos_token_id
    logits, answers = [], []
    with torch.inference_mode():
        for prompt in prompts:
            logits.append(model(input_ids=torch.tensor([prompt])).logits[0].float())
            ids = list(prompt)
            for _ in range(new_tokens):
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if token == eos:
                    break
                ids.append(token)
            answers.append(ids[len(prompt) :])
    return prompts, logits, answers, loaded.tokenizer, eos


def in_llama_cpp(gguf_file: Path, prompts: list[list[int]], new_tokens: int, eos: int):
    """Prompt logits and greedy answers of the GGUF file in llama.cpp, fed the same token ids."""
    import numpy as np
    from llama_cpp import Llama

    longest = max(len(p) for p in prompts) + new_tokens + 8
    llm = Llama(
        model_path=str(gguf_file),
        n_ctx=max(512, longest),
        n_batch=max(512, longest),
        logits_all=True,
        n_threads=os.cpu_count() or 1,
        verbose=False,
    )
    logits, answers = [], []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        logits.append(torch.from_numpy(np.array(llm.scores[: len(prompt)], dtype=np.float32)))
        answer: list[int] = []
        for _ in range(new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token == eos:
                break
            answer.append(token)
            llm.eval([token])
        answers.append(answer)
    del llm
    return logits, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--quants", default="f32,f16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the exports in this folder.")
    args = parser.parse_args()

    from tunelab.errors import TunelabError
    from tunelab.infer.export import export_run
    from tunelab.infer.gguf_export import token_kl_divergence

    prompts, ref_logits, ref_answers, tokenizer, eos = reference(args.run_dir, args.prompts, args.new_tokens)
    ref_all = torch.cat(ref_logits)
    results = []
    work = args.keep or Path(tempfile.mkdtemp(prefix="gguf-parity."))
    for quant in args.quants.split(","):
        start = time.perf_counter()
        try:
            folder, own = export_run(args.run_dir, "gguf", work / quant, quant=quant, force=True)
        except TunelabError as exc:
            print(f"{quant}: export failed: {exc}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        gguf_file = next(folder.glob("*.gguf"))
        logits, answers = in_llama_cpp(gguf_file, prompts, args.new_tokens, eos)
        out_all = torch.cat(logits)
        kld = token_kl_divergence(ref_all, out_all)
        same = [a == b for a, b in zip(ref_answers, answers)]
        row = {
            "quant": quant,
            "file_mb": round(gguf_file.stat().st_size / 2**20, 1),
            "export_s": round(seconds, 1),
            "llama_cpp": {
                "mean_kld": float(kld.mean()),
                "p99_kld": float(kld.quantile(0.99)),
                "max_kld": float(kld.max()),
                "top1_agreement": float((ref_all.argmax(-1) == out_all.argmax(-1)).float().mean()),
                "max_abs_logit_diff": float((ref_all - out_all).abs().max()),
                "greedy_same": f"{sum(same)}/{len(same)}",
                "first_differing_answer": next(
                    (
                        {"transformers": tokenizer.decode(a), "llama_cpp": tokenizer.decode(b)}
                        for a, b in zip(ref_answers, answers)
                        if a != b
                    ),
                    None,
                ),
            },
            "tunelab_check": {k: v for k, v in own.items() if k != "greedy_matches"},
            "positions": int(ref_all.shape[0]),
        }
        results.append(row)
        c, t = row["llama_cpp"], row["tunelab_check"]
        print(
            f"{quant:7s} {row['file_mb']:7.1f} MB | llama.cpp: mean KLD {c['mean_kld']:.2e}, p99 {c['p99_kld']:.2e}, "
            f"top-1 {c['top1_agreement']:.4f}, max|Δ| {c['max_abs_logit_diff']:.3f}, greedy {c['greedy_same']} | "
            f"tunelab check: {'passed' if t.get('passed') else 'FAILED'} (mean KLD {t.get('mean_kld', 0):.2e}, "
            f"top-1 {t.get('top1_agreement', 0):.4f})",
            flush=True,
        )
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    try:
        import llama_cpp

        machine["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    print(json.dumps({"run": str(args.run_dir), "machine": machine, "results": results}))


if __name__ == "__main__":
    main()
