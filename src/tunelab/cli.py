"""The ``tunelab`` command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune language models with one typed config. Docs: README.md, docs/config.md.",
)
config_app = typer.Typer(no_args_is_help=True, help="Write, check and document config files.")
app.add_typer(config_app, name="config")
data_app = typer.Typer(no_args_is_help=True, help="Check and look at data as the model will see it.")
app.add_typer(data_app, name="data")
runs_app = typer.Typer(no_args_is_help=True, help="The run registry of an output directory.")
app.add_typer(runs_app, name="runs")
OutputDirOption = typer.Option(Path("output"), "--output-directory", "-d", help="The output directory of the runs.")

# Pipes and CI logs get a wide console: an 80-column default wraps every table.
console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
STATE = {"debug": False}

SetOption = typer.Option(None, "--set", help="Override a field: section.field=value (repeatable).")
PredictionSetOption = typer.Option(
    None,
    "--set",
    help="Change a generation setting for this call: prediction.field=value (repeatable), e.g. "
    "prediction.temperature=0.7, prediction.seed=1.",
)
AllowedHostOption = typer.Option(
    None,
    "--allowed-host",
    help="Also answer to this Host name (repeatable; name or name:port). Loopback names and --host always are; "
    "any other Host gets 400 (DNS rebinding).",
)


def _show_version(value: bool) -> None:
    if value:
        from tunelab import __version__

        console.print(f"tunelab {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
    ),
) -> None:
    STATE["debug"] = debug
    _setup_logging()


def _setup_logging() -> None:
    logger = logging.getLogger("tunelab")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # Library chatter that says nothing actionable to a tunelab user.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    # bitsandbytes (imported by peft) asks for an optional kernels package on every start on AVX512-BF16 CPUs;
    # its 4-bit CPU path works without it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------------- train
@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config; omit it to run the quick start."),
    overrides: list[str] | None = SetOption,
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
    no_check: bool = typer.Option(False, "--no-check", help="Train even when the data check finds a problem."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="Resume even if the config or data changed."),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Processes per node (DDP, FSDP or DeepSpeed per environment.distributed)."
    ),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines taking part (multi-node)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's index (multi-node)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0 (multi-node)."),
    master_port: int | None = typer.Option(None, "--master-port", help="Port on node 0 (multi-node)."),
) -> None:
    """Train a model: load, evaluate, fine-tune, evaluate again, and save a run directory."""
    from tunelab.config import load_config
    from tunelab.quickstart import quickstart_config
    from tunelab.training.launch import in_distributed_launch, launch_command
    from tunelab.training.loop import train as run_training

    if resume is not None:
        from tunelab.rundir import RunDirectory

        run = RunDirectory(resume)
        if not run.config_path.is_file():
            raise TunelabError("not a tunelab run directory (no config.yaml)", file=str(resume))
        cfg = load_config(config or run.config_path, overrides)
    elif config is None:
        cfg = load_config(base=quickstart_config(), overrides=overrides)
        console.print(f"[bold]quick start[/]: {cfg.llm_backbone} + LoRA on {cfg.dataset.train_dataframe}")
    else:
        cfg = load_config(config, overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        show_warnings(cfg)
    if (nproc > 1 or nnodes > 1) and not in_distributed_launch():
        from tunelab.training.launch import run_launched

        args = sys.argv[sys.argv.index("train") + 1 :]
        args = _without_launch_options(args)
        command = launch_command(
            args,
            nproc,
            cfg.environment.distributed,
            Path(cfg.output_directory),
            nnodes,
            node_rank,
            master_addr,
            master_port,
        )
        console.print(f"launching {nproc * nnodes} processes: {' '.join(command)}")
        sys.exit(run_launched(command))  # SIGTERM reaches the training processes
    result = run_training(
        cfg, force=force, console=console, check=not no_check, resume_from=resume, allow_changes=allow_changes
    )
    if int(os.environ.get("RANK", "0")) == 0:
        show_result(result)


def _without_launch_options(args: list[str]) -> list[str]:
    """The train arguments minus the options that only concern launching processes."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def show_result(result: Any) -> None:
    """Print the before/after metrics table and a few before/after answers."""
    metrics = result.metrics
    table = Table(title="validation metrics")
    table.add_column("metric")
    for phase in ("before", "after", "best"):
        if phase in metrics:
            table.add_column(phase, justify="right")
    names = [k for k in metrics.get("after", {}) if k != "step"]
    for name in names:
        table.add_row(name, *[_fmt(metrics[p].get(name)) for p in ("before", "after", "best") if p in metrics])
    console.print(table)
    console.print(
        f"trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,} "
        f"({100 * result.trainable_share:.3f}%)"
    )
    for ex in result.examples:
        console.print(f"\n[bold]prompt[/]: {_short(ex['prompt'])}")
        console.print(f"[bold]reference[/]: {_short(ex['reference'])}")
        if ex.get("before") is not None:
            console.print(f"[bold]before[/]: {_short(ex['before'])}")
        console.print(f"[bold]after[/]: {_short(ex['after'])}")
    console.print(f"\nrun directory: {result.run_dir}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------------- eval
@app.command("eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    data: Path | None = typer.Option(None, "--data", help="Evaluate on this file instead of the validation split."),
    overrides: list[str] | None = PredictionSetOption,
) -> None:
    """Evaluate a trained run on its validation data or another file."""
    from tunelab.api import evaluate_run

    metrics, out = evaluate_run(run_dir, data, overrides)
    table = Table(title=f"evaluation of {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, _fmt(value))
    console.print(table)
    console.print(f"predictions: {out}")


# ---------------------------------------------------------------------------------------------------------- predict
@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    input_file: Path = typer.Option(..., "--input", help="CSV/JSONL/Parquet with the prompt column(s)."),
    output_file: Path = typer.Option(..., "--output", help="Where to write predictions (.csv or .jsonl)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    overrides: list[str] | None = PredictionSetOption,
) -> None:
    """Predict answers (or labels, or values) for every row of a file, in batches, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tunelab.api import predict_file

    columns = [TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("predict", total=None)
        count = predict_file(
            run_dir,
            input_file,
            output_file,
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            overrides=overrides,
        )
    console.print(f"wrote {count} predictions to {output_file}")


# ---------------------------------------------------------------------------------------------------------- chat
@app.command()
def chat(run_dir: Path = typer.Argument(..., help="A finished causal-LM run directory.")) -> None:
    """Chat with a trained model in the terminal (multi-turn; /reset clears, /exit quits)."""
    from tunelab.infer.chat import chat_repl

    chat_repl(run_dir, console)


# ---------------------------------------------------------------------------------------------------------- report
@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write (default RUN_DIR/report.html)."),
) -> None:
    """Write the run's HTML report: curves, before/after metrics and the validation rows side by side."""
    from tunelab.report import write_report

    console.print(f"report: {write_report(run_dir, output)}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    output: Path = typer.Option(Path("compare.html"), "--output", "-o", help="Where to write the HTML."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Compare runs: per run the adapter, trainable parameters, the metric before and after training, training time,
    peak memory and speed; for two runs on the same validation data also an HTML page with answers side by side."""
    from tunelab.report import write_compare_report, write_summary_report

    if len(runs) < 2:
        raise TunelabError("compare needs at least two runs", hint="tunelab compare RUN_DIR RUN_DIR [RUN_DIR ...]")
    if output.exists() and not force:
        raise TunelabError("output file already exists", file=str(output), hint="pass --force to replace it")
    print_summary([str(r) for r in runs])
    page = write_compare_report(runs[0], runs[1], output) if len(runs) == 2 else write_summary_report(runs, output)
    console.print(f"comparison: {page}")


def print_summary(run_dirs: list[str]) -> None:
    """The methods table of several runs (see ``compare.run_summary``)."""
    from tunelab.compare import SUMMARY_COLUMNS, run_summary, summary_cells

    table = Table(title="runs side by side")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in ("run", "problem", "adapter", "metric") else "right")
    for run_dir in run_dirs:
        table.add_row(*summary_cells(run_summary(run_dir)))
    console.print(table)


# ---------------------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="TUNELAB_API_KEY", help="Require 'Authorization: Bearer KEY' (env TUNELAB_API_KEY)."
    ),
    model_name: str | None = typer.Option(None, "--model-name", help="Model name to serve (default: the run's)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="Most requests generated together."),
    allowed_hosts: list[str] | None = AllowedHostOption,
    max_request_mb: float = typer.Option(4, "--max-request-mb", help="Largest request body accepted, in MB."),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/classify)."""
    from tunelab.infer.serve import serve as run_server

    run_server(
        run_dir,
        host=host,
        port=port,
        api_key=api_key,
        model_name=model_name,
        max_batch_size=max_batch_size,
        allowed_hosts=allowed_hosts or (),
        max_request_mb=max_request_mb,
    )


# ---------------------------------------------------------------------------------------------------------- config
def show_warnings(cfg: Any) -> None:
    """Print the config's fields that another field turns off (valid, but without effect), one line each."""
    for path, message in cfg.warnings():
        err_console.print(f"warning: {path}: {message}", markup=False)


@config_app.command("init")
def config_init(
    problem_type: str = typer.Option("causal_lm", "--problem-type", help="causal_lm, classification or regression."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of printing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a default config with every field commented."""
    from tunelab.config import commented_yaml, load_config
    from tunelab.io import write_text_atomic

    from tunelab.problem_spec import starter_config

    cfg = load_config(base=starter_config(problem_type))
    text = commented_yaml(cfg)
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists() and not force:
        raise TunelabError("file already exists", file=str(output), hint="pass --force to replace it")
    write_text_atomic(output, text)
    console.print(f"wrote {output}")


@config_app.command("validate")
def config_validate(
    config: Path = typer.Argument(..., help="YAML config to check."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Check a config, its backbone and every row of its data files against it, without loading a model; report
    fields that another field turns off."""
    from tunelab.config import load_config
    from tunelab.data.formats import check_file, resolve_data
    from tunelab.models.load import check_dtype_for_device, verify_backbone

    cfg = load_config(config, overrides)
    show_warnings(cfg)
    check_dtype_for_device(cfg.architecture)
    console.print(verify_backbone(cfg.llm_backbone), markup=False)
    if not cfg.dataset.train_dataframe:
        raise TunelabError("no training data set", file=str(config), field="dataset.train_dataframe")
    for note in resolve_data(cfg):
        console.print(note)
    rows, fmt = check_file(cfg.dataset.train_dataframe, cfg)
    extra = ""
    if cfg.dataset.validation_strategy == "custom":
        extra = f", {check_file(cfg.dataset.validation_dataframe, cfg)[0]} validation rows"
    console.print(
        f"{config}: valid ({cfg.problem_type}, {cfg.llm_backbone}, adapter {cfg.training.adapter}; "
        f"{rows} training rows in format '{fmt}'{extra})"
    )


@config_app.command("docs")
def config_docs(
    output: Path = typer.Option(Path("docs/config.md"), "--output", "-o", help="Where to write the reference."),
) -> None:
    """Regenerate docs/config.md from the field descriptions."""
    from tunelab.config import config_reference_markdown
    from tunelab.io import write_text_atomic

    write_text_atomic(output, config_reference_markdown())
    console.print(f"wrote {output}")


@config_app.command("import")
def config_import(
    source: Path = typer.Argument(..., help="A LLaMA-Factory or Axolotl training YAML, or an H2O LLM Studio cfg.yaml."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the tunelab config."),
    from_tool: str | None = typer.Option(
        None, "--from", help="The tool that wrote SOURCE: llamafactory, axolotl or h2o (default: told by its keys)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Turn another tool's training config into a tunelab config, listing every field left out and why."""
    from tunelab.importers import TITLES, import_config, save_imported

    result = import_config(source, from_tool)
    save_imported(result, source, output, force)
    console.print(
        f"wrote {output}: {len(result.fields)} fields from {TITLES[result.source]} ({source}), "
        f"{len(result.left_out)} left out",
        markup=False,
    )
    for key, why in result.left_out:
        console.print(f"  left out {key}: {why}", markup=False)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)


# ---------------------------------------------------------------------------------------------------------- data
@data_app.command("check")
def data_check(
    config: Path = typer.Argument(..., help="YAML config whose data to check."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Run the data contract check of a config (tokenises the data with the backbone's tokenizer; no model)."""
    from tunelab.config import load_config
    from tunelab.training.setup import prepare_data

    cfg = load_config(config, overrides)
    prepare_data(cfg, check=True, console=console)
    console.print("data check passed")


@data_app.command("inspect")
def data_inspect(
    file: str = typer.Argument(..., help="A data file (or glob) to look at."),
    config: Path | None = typer.Option(None, "--config", help="Read the data as this config says."),
    rows: int = typer.Option(3, "--rows", help="How many rows to render."),
    text_mode: str | None = typer.Option(None, "--text-mode", help="For .txt files: line or file."),
    histogram: Path | None = typer.Option(None, "--histogram", help="Also write a token-length histogram PNG here."),
    overrides: list[str] | None = SetOption,
) -> None:
    """What shape a data file has and which problem types can use it; its rows exactly as the model will see them
    (trained tokens highlighted). Needs no config: the problem type follows the data unless one is given."""
    from tunelab.data_inspect import inspect_file

    extra = [f"dataset.text_mode={text_mode}"] if text_mode else []
    inspect_file(file, config, [*(overrides or []), *extra], rows, histogram, console)


# ---------------------------------------------------------------------------------------------------------- runs
@runs_app.command("list")
def runs_list(output_directory: Path = OutputDirOption) -> None:
    """Every run: id, name, status, problem type, backbone, final metric, duration."""
    from tunelab.runs import RunRegistry

    table = Table(title=f"runs in {output_directory}")
    for column in ("id", "name", "status", "problem", "backbone", "metrics", "duration"):
        table.add_column(column)
    rows = RunRegistry(output_directory).list()
    for row in rows:
        after = row["metrics"].get("after", {})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(after.items())[:3] if isinstance(v, (int, float)))
        duration = f"{row['ended'] - row['started']:.0f} s" if row["ended"] and row["started"] else "-"
        table.add_row(
            row["id"],
            row["name"],
            row["status_text"],
            row["problem_type"] or "-",
            row["backbone"] or "-",
            shown or "-",
            duration,
        )
    console.print(table)
    for row in rows:  # what a run that did not finish left, and how to continue it
        if row["status"] in ("failed", "stopped"):
            checkpoint = row["last_checkpoint"]
            left = f"last checkpoint step {checkpoint['step']}" if checkpoint else "no checkpoint"
            resume = f"; resume: {row['resume_command']}" if row["resume_command"] else ""
            console.print(f"{row['id']} {row['name']} {row['status_text']}: {left}{resume}", markup=False)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix, or its name)."),
    output_directory: Path = OutputDirOption,
) -> None:
    """One run's record, final metrics and location (and for a run that did not finish, its last checkpoint and the
    command that resumes it)."""
    import json as _json

    from tunelab.runs import RunRegistry

    row = RunRegistry(output_directory).get(run_id)
    console.print_json(_json.dumps(row, default=str))


@runs_app.command("compare")
def runs_compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids."),
    output_directory: Path = OutputDirOption,
    plot: Path | None = typer.Option(None, "--plot", help="Where to write the loss-curve PNG."),
) -> None:
    """Config differences and metrics side by side, plus an overlaid loss-curve PNG."""
    import yaml as _yaml

    from tunelab.compare import config_differences, plot_curves
    from tunelab.runs import RunRegistry

    if len(run_ids) < 2:
        raise TunelabError("compare needs at least two runs", hint="tunelab runs compare ID ID")
    registry = RunRegistry(output_directory)
    rows = [registry.get(r) for r in run_ids]
    configs = []
    for row in rows:
        path = Path(row["path"]) / "config.yaml"
        if not path.is_file():
            raise TunelabError("the run directory is gone", file=str(row["path"]))
        configs.append(_yaml.safe_load(path.read_text(encoding="utf-8")))
    labels = [f"{row['id']} {row['name']}" for row in rows]
    print_summary([str(row["path"]) for row in rows])
    table = Table(title="config differences")
    table.add_column("field")
    for label in labels:
        table.add_column(label)
    for key, values in config_differences(configs).items():
        table.add_row(key, *[str(v) for v in values])
    console.print(table)
    table = Table(title="metrics (after training)")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    names = sorted({k for row in rows for k in row["metrics"].get("after", {})})
    for name in names:
        table.add_row(name, *[_fmt(row["metrics"].get("after", {}).get(name)) for row in rows])
    console.print(table)
    target = plot or output_directory / f"compare_{'_'.join(r['id'] for r in rows)}.png"
    console.print(f"loss curves: {plot_curves(list(zip(labels, [Path(r['path']) for r in rows])), target)}")


@runs_app.command("rm")
def runs_rm(
    run_id: str = typer.Argument(..., help="Run id to remove."),
    output_directory: Path = OutputDirOption,
    delete_files: bool = typer.Option(False, "--delete-files", help="Also delete the run directory."),
) -> None:
    """Remove a run from the registry (and with --delete-files, its run directory)."""
    from tunelab.runs import remove_run

    row = remove_run(output_directory, run_id, delete_files)
    console.print(f"removed run {row['id']} ({row['name']})" + (" and its directory" if delete_files else ""))


@app.command()
def tune(
    config: Path = typer.Argument(..., help="The base config of every trial."),
    space: Path = typer.Option(..., "--space", help="YAML search space: dotted field -> distribution."),
    trials: int = typer.Option(10, "--trials", min=1, help="How many trials to run."),
    overrides: list[str] | None = SetOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the TPE sampler."),
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning); every trial is a run in the registry."""
    from tunelab.config import load_config
    from tunelab.tune import load_space, run_search

    cfg = load_config(config, overrides)
    rows = run_search(cfg, load_space(space), trials, console, seed)
    key = cfg.best_metric()
    table = Table(title=f"trials, best first ({key})")
    for column in ("trial", "state", key, "parameters", "run directory"):
        table.add_column(column)
    for row in rows:
        params = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in row["params"].items()
        )
        value = row["value"] if row["value"] is not None else row["last_reported"]
        table.add_row(str(row["trial"]), row["state"], _fmt(value), params, row["run_dir"] or "-")
    console.print(table)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    fmt: str = typer.Option("merged", "--format", help="adapter, merged or gguf."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Export folder (default RUN_DIR/exports/...)."),
    dtype: str = typer.Option("float32", "--dtype", help="Merged weights: float32, float16 or bfloat16."),
    quant: str = typer.Option(
        "q8_0", "--quant", help="GGUF tensors: f32, f16, q8_0, q4_0, or (with llama.cpp) q4_k_m, q5_k_m, q6_k."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing export folder."),
) -> None:
    """Export a run (adapter, merged model or GGUF) with a model card and a parity check."""
    from tunelab.infer.export import export_run

    if dtype not in ("float32", "float16", "bfloat16"):
        raise TunelabError(f"unknown dtype '{dtype}'", field="--dtype", hint="float32, float16 or bfloat16")
    from tunelab.infer.gguf_export import QUANTS

    if quant.strip().lower() not in QUANTS:
        raise TunelabError(f"unknown GGUF type '{quant}'", field="--quant", hint=", ".join(QUANTS))
    folder, parity = export_run(run_dir, fmt, output, dtype, quant, force, console)
    verdict = "[green]passed[/]" if parity.get("passed") else "[red]FAILED[/]"
    details = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in parity.items()
        if k not in ("passed", "criteria", "greedy_matches")
    )
    console.print(f"exported {fmt} to {folder}")
    console.print(f"parity check {verdict}: {details}")
    if parity.get("criteria"):
        console.print("criteria: " + ", ".join(f"{k} {v}" for k, v in parity["criteria"].items()))
    if not parity.get("passed"):
        sys.exit(1)


@app.command()
def push(
    folder: Path = typer.Argument(..., help="An export folder (from tunelab export)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repository, e.g. me/my-model."),
    public: bool = typer.Option(False, "--public", help="Make the repository public (private by default)."),
) -> None:
    """Upload an export to the Hugging Face hub (needs the network and a login)."""
    from tunelab.infer.export import push_export

    console.print(f"pushed: {push_export(folder, repo_id, private=not public)}")


@app.command()
def plan(
    config: Path = typer.Argument(..., help="YAML config to plan."),
    overrides: list[str] | None = SetOption,
    probe: bool = typer.Option(False, "--probe", help="Also run 3 real steps: predicted vs measured."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Predict the peak memory, FLOPs and step time of a config (no model weights are loaded)."""
    import json as _json

    from tunelab.config import load_config
    from tunelab.plan import GB
    from tunelab.training.measure import measure_steps
    from tunelab.training.setup import plan_and_size_batches, prepare_data

    cfg = load_config(config, overrides)
    source, _, problem, data, report = prepare_data(cfg, check=False)
    result = plan_and_size_batches(cfg, problem, source, data, report, None)
    out: dict[str, Any] = {"plan": result.to_dict()}
    if probe:
        out["measured"] = measure_steps(cfg)
        out["memory_error"] = result.total / max(out["measured"]["peak_bytes"], 1) - 1
        if out["measured"]["step_seconds"]:
            out["time_error"] = (result.step_seconds or 0) / out["measured"]["step_seconds"] - 1
    if as_json:
        sys.stdout.write(_json.dumps(out) + "\n")
        return
    table = Table(title=f"plan for {config} on {result.device}")
    table.add_column("item")
    table.add_column("predicted", justify="right")
    rows = [
        ("parameters", f"{result.parameters:,}"),
        ("trainable", f"{result.trainable:,}"),
        ("batch x tokens", f"{result.batch_size} x {result.seq_len}"),
    ]
    keys = (
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "reference",
        "generation",
        "overhead",
        "total",
    )
    for key in keys:
        rows.append((f"{key} (GB)", f"{getattr(result, key) / GB:.3f}"))
    rows += [
        ("budget (GB)", f"{result.budget / GB:.1f}"),
        ("GFLOPs per token", f"{result.flops_per_token / 1e9:.3f}"),
        ("seconds per micro-batch", f"{result.step_seconds:.3f}" if result.step_seconds else "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if probe:
        measured = out["measured"]
        console.print(
            f"measured over {measured['steps']} steps: peak {measured['peak_bytes'] / GB:.3f} GB "
            f"({measured['measure']}), {measured['step_seconds']:.3f} s per step; memory error "
            f"{100 * out['memory_error']:+.1f}%, time error {100 * out.get('time_error', 0):+.1f}%"
        )


@app.command()
def models() -> None:
    """List the built-in models (usable offline)."""
    from tunelab.models.load import BUILTIN_MODELS

    for name, spec in BUILTIN_MODELS.items():
        console.print(f"{name}: {spec.description} (pip package {spec.pip_name})")


# ---------------------------------------------------------------------------------------------------------- studio
@app.command()
def studio(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --password."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    password: str | None = typer.Option(
        None, "--password", envvar="TUNELAB_STUDIO_PASSWORD", help="Require this password (or TUNELAB_STUDIO_PASSWORD)."
    ),
    output_directory: Path = OutputDirOption,
    data_dir: Path = typer.Option(Path("studio_data"), "--data-dir", help="The studio's folder for uploads and logs."),
    max_upload_mb: float = typer.Option(50, "--max-upload-mb", help="Largest upload accepted, in MB."),
    allowed_hosts: list[str] | None = AllowedHostOption,
) -> None:
    """Open the web studio: datasets, experiments with live charts, chat and export in the browser (works offline)."""
    from tunelab.ui import run_studio

    run_studio(host, port, password, output_directory, data_dir, max_upload_mb, allowed_hosts=allowed_hosts or ())


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes of every click in play: typer >= 0.2x raises its vendored ``typer._click`` ones,
    older typers (and click-based plugins) the ``click`` package's."""
    import importlib

    usage: list[type] = []
    aborts: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        if hasattr(module, "Abort"):  # typer's vendored click keeps Abort in typer.exceptions (typer.Abort)
            aborts.append(module.Abort)
    return tuple(usage), tuple(aborts)


def main() -> None:
    """Entry point: run the app, turning tunelab errors into one line and exit code 2."""
    usage_errors, aborts = _click_exception_types()
    try:
        code = app(standalone_mode=False)
        # Without standalone mode, typer returns the code of a typer.Exit (--help, --version, Ctrl-C), not exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except TunelabError as exc:
        if STATE["debug"]:
            raise
        err_console.print(f"error: {exc.line()}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except usage_errors as exc:  # unknown command/option, missing or bad argument: click's usage message
        exc.show()
        sys.exit(exc.exit_code)
    except aborts:
        sys.exit(1)


if __name__ == "__main__":
    main()
