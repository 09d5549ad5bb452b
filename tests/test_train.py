"""Training on tiny models: adapter invariants, the loss, accumulation, the run directory contract."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import causal_config, classification_config

from tunelab.config import load_config
from tunelab.data.pipeline import build_splits
from tunelab.errors import RunDirError
from tunelab.infer.model import load_run
from tunelab.models.adapters import count_parameters
from tunelab.models.load import load_tokenizer, resolve_backbone
from tunelab.problems import build_problem
from tunelab.training.loop import accumulation_windows, train, train_step
from tunelab.training.setup import build_model, setup


def built(cfg_data):
    cfg = load_config(base=cfg_data)
    tok = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem = build_problem(cfg, tok)
    data = build_splits(cfg, problem)
    return cfg, problem, data


def test_lora_starts_equal_to_the_base_model(tiny_llama, qa_jsonl, tmp_path):
    cfg, problem, data = built(causal_config(tiny_llama, qa_jsonl, tmp_path))
    torch.manual_seed(0)
    base = build_model(
        cfg.model_copy(update={"training": cfg.training.model_copy(update={"adapter": "none"})}),
        problem,
        str(tiny_llama),
    )
    lora = build_model(cfg, problem, str(tiny_llama))
    batch = problem.collate(data.train, [0, 1, 2], train=False)
    with torch.no_grad():
        a = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "head_only", "none"])
def test_only_the_intended_parameters_train(tiny_llama, qa_jsonl, tmp_path, adapter):
    cfg, problem, _ = built(causal_config(tiny_llama, qa_jsonl, tmp_path, training={"adapter": adapter}))
    model = build_model(cfg, problem, str(tiny_llama))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if adapter == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        # 2 layers x 7 linear projections, each A [r, in] and B [out, r]
        assert count_parameters(model).trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    elif adapter == "head_only":
        assert trainable == ["lm_head.weight"] or trainable == ["model.embed_tokens.weight"]  # tied
    else:
        assert len(trainable) == len(list(model.parameters()))


def test_fast_loss_equals_full_logits_loss(tiny_llama, qa_jsonl, tmp_path):
    cfg, problem, data = built(causal_config(tiny_llama, qa_jsonl, tmp_path))
    model = build_model(cfg, problem, str(tiny_llama)).eval()
    batch = problem.collate(data.train, [0, 1, 2, 3], train=False)
    loss_sum, count = problem.loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="sum", ignore_index=-100
    )
    assert int(count) == int(batch["num_trained"]) > 0
    assert torch.allclose(loss_sum, reference, rtol=1e-5)


def test_loss_falls_when_overfitting_one_batch(tiny_llama, qa_jsonl, tmp_path):
    cfg, problem, data = built(causal_config(tiny_llama, qa_jsonl, tmp_path, training={"adapter": "none"}))
    torch.manual_seed(0)
    model = build_model(cfg, problem, str(tiny_llama))
    batch = problem.collate(data.train, [0, 1, 2, 3], train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss_sum, count = problem.loss(model, batch)
        (loss_sum / count).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss_sum.detach() / count))
    assert losses[-1] < 0.3 * losses[0]


def test_accumulation_normalises_by_tokens_of_the_whole_window(tiny_llama, qa_jsonl, tmp_path):
    """Two micro-batches of 2 rows give the gradient of one batch of 4 rows."""
    grads = {}
    for batch_size, accumulation in ((4, 1), (2, 2)):
        cfg = load_config(
            base=causal_config(
                tiny_llama,
                qa_jsonl,
                tmp_path,
                training={
                    "batch_size": batch_size,
                    "grad_accumulation": accumulation,
                    "adapter": "none",
                    "learning_rate": 1e-9,
                },
            )
        )
        s = setup(cfg, seed=1)
        split = s.data.train
        batches = [s.problem.collate(split, idx, train=False) for idx in ([0, 1, 2, 3],) if batch_size == 4] or [
            s.problem.collate(split, idx, train=False) for idx in ([0, 1], [2, 3])
        ]
        window = next(accumulation_windows(batches, accumulation))
        s.optimizer.step = lambda: None  # keep the gradients to compare them
        s.optimizer.zero_grad = lambda set_to_none=True: None
        train_step(s, window)
        grads[accumulation] = torch.cat([p.grad.flatten() for p in s.model.parameters() if p.grad is not None])
    assert torch.allclose(grads[1], grads[2], atol=1e-6)


def test_causal_run_writes_the_run_directory(tiny_llama, qa_jsonl, tmp_path):
    cfg = load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path, environment={"seed": -1}))
    result = train(cfg)
    run = result.run_dir
    for name in (
        "config.yaml",
        "run.json",
        "metrics.json",
        "metrics.jsonl",
        "validation_predictions.csv",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).exists(), name
    assert list((run / "logs").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"before", "after", "best"}
    assert {"loss", "perplexity", "bleu"} <= set(metrics["after"])
    assert metrics["after"]["loss"] < metrics["before"]["loss"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert train_records and all(
        {"step", "epoch", "loss", "learning_rate", "tokens_per_s"} <= set(r) for r in train_records
    )
    assert any("eval_bleu" in r for r in records)
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps))  # one record per logged step
    saved = load_config(run / "config.yaml")
    assert saved.environment.seed >= 0  # the random seed actually used is recorded
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and 0 < info["trainable_share"] < 1
    import csv

    rows = list(csv.DictReader(open(run / "validation_predictions.csv", encoding="utf-8")))
    assert len(rows) == 5 and {"prompt", "reference", "prediction", "score", "prediction_before"} <= set(rows[0])


def test_same_seed_same_run(tiny_llama, qa_jsonl, tmp_path):
    a = train(load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path / "a")))
    b = train(load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path / "b")))
    assert a.metrics["after"]["loss"] == pytest.approx(b.metrics["after"]["loss"], abs=1e-6)


def test_existing_run_directory_is_not_overwritten_without_force(tiny_llama, qa_jsonl, tmp_path):
    cfg = load_config(
        base=causal_config(
            tiny_llama, qa_jsonl, tmp_path, training={"max_steps": 1}, prediction={"max_length_inference": 2}
        )
    )
    train(cfg)
    marker = cfg.run_dir / "metrics.json"
    before = marker.read_text()
    with pytest.raises(RunDirError, match="already exists"):
        train(cfg)
    assert marker.read_text() == before
    train(cfg, force=True)
    assert marker.exists()


def test_max_steps_overrides_epochs_and_save_best(tiny_llama, qa_jsonl, tmp_path):
    cfg = load_config(
        base=causal_config(
            tiny_llama,
            qa_jsonl,
            tmp_path,
            training={"max_steps": 6, "epochs": 50, "evaluation_epochs": 0.25, "save_best_checkpoint": True},
            prediction={"metric": "Perplexity"},
        )
    )
    result = train(cfg)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["steps"] == 6
    assert result.metrics["after"]["perplexity"] == pytest.approx(result.metrics["best"]["perplexity"])
    # the saved adapter is the best one: reloading it reproduces the best loss
    loaded = load_run(result.run_dir)
    split, examples = __import__("tunelab.data.pipeline", fromlist=["x"]).validation_data(loaded.cfg, loaded.problem)
    loss, _ = loaded.problem.validation_loss(loaded.model, split)
    assert loss == pytest.approx(result.metrics["best"]["loss"], rel=1e-5)


@pytest.mark.parametrize("adapter", ["lora", "none", "head_only"])
def test_classification_adapters_train_and_report_share(tiny_bert, sentiment_csv, tmp_path, adapter):
    # A random tiny encoder gives weak features: the head alone needs a bigger step to move the loss.
    lr = 5e-2 if adapter == "head_only" else 5e-3
    cfg = load_config(
        base=classification_config(
            tiny_bert, sentiment_csv, tmp_path, training={"adapter": adapter, "learning_rate": lr}
        )
    )
    result = train(cfg)
    assert (result.run_dir / "labels.json").is_file()
    assert json.loads((result.run_dir / "labels.json").read_text())["classes"] == ["negative", "positive"]
    assert {"accuracy", "f1", "auc", "loss"} <= set(result.metrics["after"])
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    share = result.trainable_share
    assert (share == 1.0) if adapter == "none" else (0 < share < 0.5)
    loaded = load_run(result.run_dir)
    preds = loaded.problem.predict(loaded.model, [{"text": "great movie 2 great"}])
    assert preds[0]["prediction"] in ("negative", "positive")


def test_classification_on_a_decoder_backbone(tiny_llama, sentiment_csv, tmp_path):
    cfg = load_config(base=classification_config(tiny_llama, sentiment_csv, tmp_path))
    result = train(cfg)
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]


def test_saved_run_reproduces_the_trained_model(tiny_llama, qa_jsonl, tmp_path):
    cfg = load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path))
    result = train(cfg)
    loaded = load_run(result.run_dir)
    from tunelab.data.pipeline import validation_data

    split, _ = validation_data(loaded.cfg, loaded.problem)
    loss, _ = loaded.problem.validation_loss(loaded.model, split)
    assert loss == pytest.approx(result.metrics["after"]["loss"], rel=1e-5)


def test_multi_label_classification_trains(tiny_bert, tmp_path):
    data = tmp_path / "multi.jsonl"
    labels = [["a"], ["b"], ["a", "b"]]
    lines = []
    for i in range(60):
        words = " ".join(labels[i % 3])
        lines.append(json.dumps({"text": f"{words} movie {i} {words}", "label": labels[i % 3]}) + "\n")
    data.write_text("".join(lines))
    cfg = load_config(base=classification_config(tiny_bert, data, tmp_path, training={"learning_rate": 1e-2}))
    result = train(cfg)
    assert json.loads((result.run_dir / "labels.json").read_text()) == {"classes": ["a", "b"], "multi_label": True}
    assert {"accuracy", "f1", "f1_micro", "auc"} <= set(result.metrics["after"])
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    loaded = load_run(result.run_dir)
    preds = loaded.problem.predict(loaded.model, [{"text": "a b movie 1 a b"}])
    assert set(preds[0]) == {"prediction", "prob_a", "prob_b"}
