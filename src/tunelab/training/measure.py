"""The planner's check against reality: a few real training steps, timed and with their peak memory measured.

``tunelab plan --probe`` compares these with the plan's predictions. It builds what training builds
(``training.setup``), so it lives in the training layer; the planner itself (``tunelab.plan``) only predicts.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.training.optim import build_optimizer
from tunelab.training.setup import Collator, build_batches, build_model, prepare_data


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_steps(cfg: RunConfig, steps: int = 3) -> dict[str, Any]:
    """Run ``steps`` real training steps and measure the peak memory growth and the step time.

    On CPU the growth is the peak RSS minus the RSS just before the model is loaded (data and tokenizer are already
    in memory then); on a GPU it is ``torch.cuda.max_memory_allocated``.
    """
    source, _, problem, data, _ = prepare_data(cfg, check=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = current_rss()
    model = build_model(cfg, problem, source).to("cuda" if torch.cuda.is_available() else "cpu").train()
    optimizer = build_optimizer(model, cfg.training)
    batches = build_batches(cfg, data.train, seed=0)
    collate = Collator(problem, data.train, train=True)
    device = next(model.parameters()).device
    lengths = data.train.lengths()

    def padded_tokens(batch: list[Any]) -> int:
        sizes = [sum(lengths[i] for i in item) if isinstance(item, list) else lengths[item] for item in batch]
        return max(sizes) * len(sizes)

    # The plan predicts a run's peak, which comes with its longest batches: measure those.
    longest = sorted(batches.epoch_batches(0), key=padded_tokens, reverse=True)[:steps]
    times = []
    for indices in longest:
        batch = {k: v.to(device) for k, v in collate(indices).items() if k != "rows"}
        started = time.perf_counter()
        loss_sum, count = problem.loss(model, batch)
        (loss_sum / count.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    if torch.cuda.is_available():
        peak, measure = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        peak, measure = peak_rss() - before, "peak RSS growth from just before the model loads"
    return {
        "steps": len(times),
        "step_seconds": sorted(times)[len(times) // 2] if times else None,
        "peak_bytes": peak,
        "measure": measure,
    }
