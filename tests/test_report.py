"""HTML reports: built from small synthetic run directories written in the formats real runs use."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunelab.errors import DataError, RunDirError
from tunelab.report import write_compare_report, write_report

CAUSAL_COLUMNS = ["prompt", "reference", "prediction", "score", "loss", "prediction_before", "score_before"]
CLASSIFICATION_COLUMNS = [
    "prompt",
    "reference",
    "prediction",
    "score",
    "confidence",
    "prediction_before",
    "score_before",
]


def _config(name: str, problem_type: str, metric: str, learning_rate: float = 0.0003) -> dict[str, Any]:
    return {
        "problem_type": problem_type,
        "experiment_name": name,
        "output_directory": "output",
        "llm_backbone": "smollm2-135m-instruct",
        "dataset": {"train_dataframe": "data.jsonl", "validation_size": 0.1, "split_seed": 42},
        "training": {"adapter": "lora", "lora_r": 16, "lora_alpha": 32.0, "learning_rate": learning_rate},
        "prediction": {"metric": metric},
    }


def _write_run(
    path: Path,
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]] | None,
    columns: list[str],
    status: str = "finished",
) -> Path:
    """A run directory as training leaves it: config.yaml, run.json, metrics.json(l), validation_predictions.csv."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    info = {
        "status": status,
        "seed": 42,
        "problem_type": config["problem_type"],
        "adapter": "lora",
        "started": 1795564987.4,
        "trainable_parameters": 4884480,
        "total_parameters": 139399488,
        "trainable_share": 0.035039440030081026,
        "train_rows": 1260,
        "validation_rows": len(rows or []),
    }
    if config["problem_type"] == "classification":
        info["classes"] = ["0", "1"]
    if status == "finished":
        info.update(finished=1795567821.9, steps=30, epochs=1, best_step=30)
    (path / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if rows is not None:
        with open(path / "validation_predictions.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[c for c in columns if any(c in r for r in rows)])
            writer.writeheader()
            writer.writerows(rows)
    return path


def _records(metric: str, before: float, after: float) -> list[dict[str, Any]]:
    return [
        {"step": 0, "epoch": 0.0, "eval_loss": 2.05, "eval_perplexity": 7.768, f"eval_{metric}": before},
        {"step": 10, "epoch": 0.33, "loss": 2.09, "learning_rate": 0.0003, "tokens_per_s": 62.8},
        {"step": 20, "epoch": 0.66, "loss": 1.95, "learning_rate": 0.0002, "tokens_per_s": 35.4},
        {"step": 30, "epoch": 1.0, "loss": 1.62, "eval_loss": 1.56, "eval_perplexity": 4.766, f"eval_{metric}": after},
    ]


# score before, score after: changes +40, -5, +2, 0
CAUSAL_ROWS = [
    ("What is Lamini?", "A library.", "A library for LLMs.", "Lamini is a cat.", 10.0, 50.0),
    ("Is it free?", "Yes.", "No.", "Yes it is.", 30.0, 25.0),
    ("Who wrote it?", "Lamini AI.", "Lamini AI wrote it.", "Someone.", 1.0, 3.0),
    ("Does it run offline?", "Yes.", "Yes.", "Yes.", 100.0, 100.0),
]


def causal_run(path: Path, rows: list[tuple] = CAUSAL_ROWS, bleu_after: float = 18.41, before: bool = True) -> Path:
    metrics: dict[str, Any] = {"after": {"loss": 1.56, "perplexity": 4.766, "bleu": bleu_after}}
    if before:
        metrics["before"] = {"loss": 2.05, "perplexity": 7.768, "bleu": 9.033}
    metrics["best"] = {**metrics["after"], "step": 30}  # the same as after: no column of its own
    if not before:
        metrics["test"] = {"loss": 1.6, "bleu": 17.0}
    csv_rows = []
    for prompt, reference, after, base, score_before, score_after in rows:
        row = {"prompt": prompt, "reference": reference, "prediction": after, "score": score_after, "loss": 1.2}
        if before:
            row.update(prediction_before=base, score_before=score_before)
        csv_rows.append(row)
    config = _config(path.name, "causal_lm", "BLEU")
    return _write_run(path, config, metrics, _records("bleu", 9.033, bleu_after), csv_rows, CAUSAL_COLUMNS)


def classification_run(path: Path) -> Path:
    metrics = {
        "before": {"loss": 0.693, "accuracy": 0.5, "f1": 0.46},
        "after": {"loss": 0.342, "accuracy": 0.75, "f1": 0.73},
    }
    rows = [  # text, truth, after, confidence, before
        ("great film", "1", "1", 0.9, "0"),
        ("dull and long", "0", "1", 0.8, "0"),
        ("so bad", "0", "0", 0.95, "1"),
        ("loved it", "1", "1", 0.7, "1"),
    ]
    csv_rows = [
        {
            "prompt": text,
            "reference": truth,
            "prediction": after,
            "score": float(after == truth),
            "confidence": confidence,
            "prediction_before": base,
            "score_before": float(base == truth),
        }
        for text, truth, after, confidence, base in rows
    ]
    config = _config(path.name, "classification", "Accuracy", 0.001)
    return _write_run(path, config, metrics, _records("accuracy", 0.5, 0.75), csv_rows, CLASSIFICATION_COLUMNS)


def _rows_section(page: str) -> str:
    return page[page.index('<table class="rows') :]


def _metric_row(page: str, name: str) -> str:
    return re.search(rf"<tr[^>]*><th>{name} <small>.*?</tr>", page).group(0)


def test_causal_report_has_curves_metrics_and_sorted_rows(tmp_path):
    run = causal_run(tmp_path / "lm")
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    # loss (train + validation), perplexity and bleu: one embedded PNG each, nothing fetched from the network
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page
    assert "Fine-tuning helped: bleu 9.033 → 18.41 (+9.377)" in page
    assert "2 better</b>" in page and "1 worse</b>" in page and "1 unchanged" in page
    bleu, loss = _metric_row(page, "bleu"), _metric_row(page, "loss")
    assert "9.033" in bleu and "18.41" in bleu and 'class="num better"' in bleu and "▲ +9.377" in bleu
    assert "2.05" in loss and "1.56" in loss and 'class="num better"' in loss and "▼ -0.49" in loss
    rows = _rows_section(page)
    order = [rows.index(p) for p in ("What is Lamini?", "Who wrote it?", "Does it run offline?", "Is it free?")]
    assert order == sorted(order)  # by change: +40, +2, 0, -5
    assert '<th class="change" data-dir=desc>' in rows and "Lamini AI wrote it." in rows


def test_worse_metric_is_flagged_and_output_path_is_honoured(tmp_path):
    run = causal_run(tmp_path / "lm", bleu_after=5.0)
    out = write_report(run, tmp_path / "elsewhere" / "page.html")
    page = out.read_text(encoding="utf-8")
    assert not (run / "report.html").exists()
    assert "Fine-tuning made it worse: bleu 9.033 → 5" in page
    assert 'class="num worse"' in _metric_row(page, "bleu")
    assert [p.name for p in out.parent.iterdir()] == ["page.html"]  # no temp file left behind


def test_everything_is_escaped(tmp_path):
    nasty = '<script>alert("x")</script>'
    rows = [(nasty, "<b>ref</b>", "a & b", "c", 1.0, 2.0)]
    run = causal_run(tmp_path / "lm", rows=rows)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["experiment_name"] = "<img src=x onerror=alert(1)>"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page = write_report(run).read_text(encoding="utf-8")
    assert page.count("<script>") == 1  # the report's own sorting script
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>ref</b>" not in page and "&lt;b&gt;ref&lt;/b&gt;" in page and "a &amp; b" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_long_texts_are_clipped_with_the_full_text_available(tmp_path):
    long_prompt = "word " * 300 + "THE-END"
    run = causal_run(tmp_path / "lm", rows=[(long_prompt, "r", "a", "b", 1.0, 2.0)])
    rows = _rows_section(write_report(run).read_text(encoding="utf-8"))
    assert "<details>" in rows and "THE-END" in rows
    assert rows.index('<span class="clip">') < rows.index("THE-END")


def test_classification_report_shows_labels_probabilities_and_confusion(tmp_path):
    page = write_report(classification_run(tmp_path / "cls")).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3  # loss, perplexity, accuracy
    assert "Fine-tuning helped: accuracy 0.5 → 0.75 (+0.25)" in page
    rows = _rows_section(page)
    for header in ("text", "true label", "predicted before", "predicted after", "P(true) after", "change"):
        assert f">{header}</th>" in rows
    assert ">P(true) before</th>" not in rows  # the base model's probabilities are not saved
    assert 'data-v="0.19999999999999996"' in rows or 'data-v="0.2"' in rows  # wrong of two: 1 - confidence
    assert rows.index("so bad") < rows.index("loved it") < rows.index("dull and long")  # +1, 0, -1
    confusion = page[page.index("Confusion matrix") : page.index('<table class="rows')]
    fine_tuned = confusion[confusion.index("fine-tuned") :]
    counts = [int(n) for n in re.findall(r"\)\">(\d+)</td>", fine_tuned)]
    assert counts == [1, 1, 0, 2]  # true 0: one right, one called 1; true 1: both right


def test_regression_report_knows_lower_error_is_better(tmp_path):
    metrics = {"before": {"loss": 2.0, "mae": 1.2, "r2": -0.1}, "after": {"loss": 0.4, "mae": 0.5, "r2": 0.6}}
    rows = [
        {
            "prompt": "a text",
            "reference": 3.0,
            "prediction": 2.5,
            "score": -0.5,
            "prediction_before": 1.0,
            "score_before": -2.0,
        },
        {
            "prompt": "another",
            "reference": 1.0,
            "prediction": 2.0,
            "score": -1.0,
            "prediction_before": 1.5,
            "score_before": -0.5,
        },
    ]
    config = _config("reg", "regression", "MAE")
    run = _write_run(
        tmp_path / "reg", config, metrics, _records("mae", 1.2, 0.5), rows, CAUSAL_COLUMNS[:4] + CAUSAL_COLUMNS[5:]
    )
    page = write_report(run).read_text(encoding="utf-8")
    assert "Fine-tuning helped: mae 1.2 → 0.5 (-0.7)" in page and 'class="num better"' in _metric_row(page, "mae")
    table = _rows_section(page)
    assert ">target</th>" in table and ">predicted after</th>" in table and "minus the absolute error" in page
    assert table.index("a text") < table.index("another")  # +1.5, then -0.5


def test_missing_pieces_degrade_with_notes(tmp_path):
    # a run still going: no metrics.json, no predictions, a line cut by a crash
    config = _config("live", "causal_lm", "BLEU")
    records = _records("bleu", 9.0, 12.0)[:3] + [{"step": 25, "eval_loss": 1.7, "eval_bleu": 12.0}]
    live = _write_run(tmp_path / "live", config, None, records, None, CAUSAL_COLUMNS, status="running")
    with open(live / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 26, "loss": ')
    page = write_report(live).read_text(encoding="utf-8")
    assert "running" in page and "so far" in page and "no validation_predictions.csv" in page
    assert "bleu 9 → 12" in page and page.count("data:image/png;base64,") == 3

    # no before-evaluation
    page = write_report(causal_run(tmp_path / "nobefore", before=False)).read_text(encoding="utf-8")
    assert "no base-model evaluation to compare with" in page and "No before-evaluation" in page
    assert '<table class="metrics"><tr><th>metric</th><th>after (fine-tuned)</th><th>test</th></tr>' in page

    # raw text: nothing to answer, scores are NaN
    raw = causal_run(tmp_path / "raw", rows=[("", "", "", "", float("nan"), float("nan"))] * 3)
    page = write_report(raw).read_text(encoding="utf-8")
    assert "raw-text run" in page and '<table class="rows' not in page

    # damaged files
    broken = causal_run(tmp_path / "broken")
    (broken / "metrics.json").write_text("{not json", encoding="utf-8")
    (broken / "config.yaml").write_text("a: [unclosed", encoding="utf-8")
    page = write_report(broken).read_text(encoding="utf-8")
    assert "metrics.json could not be read" in page and "config.yaml could not be read" in page

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        write_report(tmp_path / "empty")


def test_rows_are_capped_keeping_the_largest_changes(tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.report.MAX_ROWS", 4)
    rows = [(f"prompt-{i}", "r", "a", "b", 50.0, 50.0 + i - 5) for i in range(10)]  # changes -5 .. +4
    page = write_report(causal_run(tmp_path / "lm", rows=rows)).read_text(encoding="utf-8")
    assert "Showing 4 of 10 rows" in page
    assert re.findall(r"prompt-(\d)", _rows_section(page)) == ["9", "8", "1", "0"]


def test_compare_report(tmp_path):
    a = causal_run(tmp_path / "a")
    scores_b = [60.0, 20.0, 1.0, 20.0]  # B - A per row: +10, -5, -2, -80
    rows_b = [(p, r, f"B says {i}", base, sb, scores_b[i]) for i, (p, r, _, base, sb, _) in enumerate(CAUSAL_ROWS)]
    b = causal_run(tmp_path / "b", rows=rows_b, bleu_after=30.0)
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["training"]["learning_rate"] = 0.001
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    page = write_compare_report(a, b, tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert "B is better than A on bleu: 18.41 vs 30 (+11.59)" in page
    assert "<th>training.learning_rate</th>" in page and "0.0003" in page and "0.001" in page
    assert "<th>dataset.split_seed</th>" not in page  # equal fields are not listed
    assert page.count("data:image/png;base64,") == 3  # loss, perplexity and bleu, both runs overlaid
    rows = _rows_section(page)
    for header in ("answer A", "answer B", "score A", "score B", "change"):
        assert f">{header}</th>" in rows
    order = [rows.index(f"B says {i}") for i in (0, 2, 1, 3)]
    assert order == sorted(order)


def test_compare_refuses_different_validation_rows(tmp_path):
    a = causal_run(tmp_path / "a")
    b = causal_run(tmp_path / "b", rows=[CAUSAL_ROWS[0], CAUSAL_ROWS[2], CAUSAL_ROWS[1], CAUSAL_ROWS[3]])
    with pytest.raises(DataError) as caught:
        write_compare_report(a, b, tmp_path / "compare.html")
    message = str(caught.value)
    assert "different rows" in message and "row 2" in message and "hint:" in message and "\n" not in message
    c = causal_run(tmp_path / "c", rows=CAUSAL_ROWS[:3])
    with pytest.raises(DataError, match="4 and 3 validation rows"):
        write_compare_report(a, c, tmp_path / "compare.html")
    assert not (tmp_path / "compare.html").exists()


def test_compare_classification_runs(tmp_path):
    a, b = classification_run(tmp_path / "a"), classification_run(tmp_path / "b")
    page = write_compare_report(a, b, tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "A and B are equal on accuracy" in page
    assert "<th>experiment_name</th>" in page
    assert ">predicted A</th>" in _rows_section(page) and ">P(true) B</th>" in _rows_section(page)
    (b / "validation_predictions.csv").unlink()
    page = write_compare_report(a, b, tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "one of the runs has no validation_predictions.csv" in page and '<table class="rows' not in page
