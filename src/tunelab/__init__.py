"""tunelab: fine-tune language models from a laptop to a cluster with one typed config."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "Runner", "RunResult", "TunelabError", "load_config", "train", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import tunelab` and `tunelab --help` don't pay for torch and transformers.
    if name == "Runner":
        from tunelab.runner import Runner

        return Runner
    if name == "train":
        from tunelab import api

        return api.train
    if name == "RunResult":
        from tunelab.training.loop import RunResult

        return RunResult
    if name in ("RunConfig", "load_config"):
        from tunelab import config

        return getattr(config, name)
    if name == "TunelabError":
        from tunelab.errors import TunelabError

        return TunelabError
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
