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

console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
STATE = {"debug": False}

SetOption = typer.Option(None, "--set", help="Override a field: section.field=value (repeatable).")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
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


# ---------------------------------------------------------------------------------------------------------- train
@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config; omit it to run the quick start."),
    overrides: list[str] | None = SetOption,
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
    no_check: bool = typer.Option(False, "--no-check", help="Train even when the data check finds a problem."),
) -> None:
    """Train a model: load, evaluate, fine-tune, evaluate again, and save a run directory."""
    from tunelab.config import load_config
    from tunelab.quickstart import quickstart_config
    from tunelab.training.loop import train as run_training

    if config is None:
        cfg = load_config(base=quickstart_config(), overrides=overrides)
        console.print(f"[bold]quick start[/]: {cfg.llm_backbone} + LoRA on {cfg.dataset.train_dataframe}")
    else:
        cfg = load_config(config, overrides)
    result = run_training(cfg, force=force, console=console, check=not no_check)
    show_result(result)


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
) -> None:
    """Evaluate a trained run on its validation data or another file."""
    from tunelab.api import evaluate_run

    metrics, out = evaluate_run(run_dir, data)
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
) -> None:
    """Predict answers (or labels) for every row of a file."""
    from tunelab.api import predict_file

    count = predict_file(run_dir, input_file, output_file, force=force)
    console.print(f"wrote {count} predictions to {output_file}")


# ---------------------------------------------------------------------------------------------------------- chat
@app.command()
def chat(run_dir: Path = typer.Argument(..., help="A finished causal-LM run directory.")) -> None:
    """Chat with a trained model in the terminal (multi-turn; /reset clears, /exit quits)."""
    from tunelab.infer.chat import chat_repl

    chat_repl(run_dir, console)


# ---------------------------------------------------------------------------------------------------------- config
@config_app.command("init")
def config_init(
    problem_type: str = typer.Option("causal_lm", "--problem-type", help="causal_lm or classification."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of printing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a default config with every field commented."""
    from tunelab.config import commented_yaml, load_config
    from tunelab.io import write_text_atomic

    base: dict[str, Any] = {"problem_type": problem_type}
    if problem_type == "classification":
        base.update(llm_backbone="all-minilm-l6-v2", dataset={"prompt_column": ["text"], "label_column": "label"})
    cfg = load_config(base=base)
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
    """Check a config and every row of its data files against it, without loading a model."""
    from tunelab.config import load_config
    from tunelab.data.formats import check_file

    cfg = load_config(config, overrides)
    if not cfg.dataset.train_dataframe:
        raise TunelabError("no training data set", file=str(config), field="dataset.train_dataframe")
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
    histogram: Path | None = typer.Option(None, "--histogram", help="Where to write the length histogram PNG."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Render rows exactly as the model will see them (trained tokens highlighted) and report on the file."""
    from tunelab.config import load_config
    from tunelab.data.inspect import compute_report, print_report, render_row, save_length_histogram
    from tunelab.data.pipeline import encode_source
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem

    extra = [f"dataset.text_mode={text_mode}"] if text_mode else []
    cfg = (
        load_config(config, [*(overrides or []), *extra])
        if config
        else load_config(overrides=[*(overrides or []), *extra])
    )
    tokenizer = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem = build_problem(cfg, tokenizer)
    from tunelab.data.formats import ExampleReader

    reader = ExampleReader(cfg, file)
    labels = [problem.label_of(ex) for _, ex in reader]
    problem.fit([x for x in labels if x is not None], file)
    split, _ = encode_source(file, problem)
    report = compute_report(split, cfg, file, reader.format)
    print_report(report, console, cfg)
    for i in range(min(rows, len(split))):
        console.print(f"\n[bold]row {split.rows[i]}[/] ({split.lengths()[i]} tokens; trained in green, masked dimmed)")
        console.print(render_row(split, i, tokenizer))
    target = histogram or Path(Path(file).name.split(".")[0] + "_lengths.png")
    console.print(f"\nlength histogram: {save_length_histogram(split, cfg, target)}")


@app.command()
def models() -> None:
    """List the built-in models (usable offline)."""
    from tunelab.models.load import BUILTIN_MODELS

    for name, spec in BUILTIN_MODELS.items():
        console.print(f"{name}: {spec.description} (pip package {spec.pip_name})")


def main() -> None:
    """Entry point: run the app, turning tunelab errors into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except TunelabError as exc:
        if STATE["debug"]:
            raise
        err_console.print(f"error: {exc.line()}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
