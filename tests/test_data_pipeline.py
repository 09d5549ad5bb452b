"""Packing, length grouping, the tokenisation cache, and the data contract check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ASSETS, causal_config

from tunelab.config import load_config
from tunelab.data.collate import TrainBatches, pack_bins, pack_causal, pad_causal, padding_share
from tunelab.data.inspect import compute_report, enforce
from tunelab.data.pipeline import build_splits
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer, resolve_backbone
from tunelab.problems import build_problem
from tunelab.training.setup import build_model


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def built(data):
    cfg = load_config(base=data)
    tok = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem = build_problem(cfg, tok)
    return cfg, problem, build_splits(cfg, problem)


def test_pack_bins_respects_capacity_and_keeps_every_row():
    lengths = np.random.default_rng(0).integers(1, 100, 500).tolist()
    bins = pack_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (len(bins) * 128) > 0.95


def test_packed_batch_gives_the_same_per_example_loss(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    cfg, problem, data = built(causal_config(tiny_llama, qa_jsonl, tmp_path, training={"adapter": "none"}))
    torch.manual_seed(0)
    model = build_model(cfg, problem, str(tiny_llama)).eval().float()
    rows = [0, 1, 2, 3, 4, 5]
    packed = pack_causal(data.train, [[0, 1, 2], [3, 4, 5]], problem.tokenizer.pad_token_id)
    assert "attention_mask" in packed and "position_ids" in packed
    with torch.no_grad():
        logits, targets, batch_rows = problem.trained_logits(model, packed)
        token_loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    # map each packed trained token back to its example through the segment boundaries
    lengths = data.train.lengths()
    per_example_packed = []
    labels = packed["labels"][:, 1:]
    for b, members in enumerate([[0, 1, 2], [3, 4, 5]]):
        positions = (labels[b] != -100).nonzero()[:, 0] + 1  # position of each trained label
        losses = token_loss[batch_rows == b]
        start = 0
        for i in members:
            in_example = (positions >= start) & (positions < start + lengths[i])
            per_example_packed.append(float(losses[in_example].mean()))
            start += lengths[i]
    with torch.no_grad():
        unpacked = []
        for i in rows:
            batch = pad_causal(data.train, [i], problem.tokenizer.pad_token_id)
            loss_sum, count = problem.loss(model, batch)
            unpacked.append(float(loss_sum / count))
    assert np.allclose(per_example_packed, unpacked, atol=1e-4), (per_example_packed, unpacked)
    # and the packed batch trains the same number of tokens
    assert int(packed["num_trained"]) == sum(int(pad_causal(data.train, [i], 0)["num_trained"]) for i in rows)


def test_padding_free_batches_train_under_gradient_checkpointing(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    # The layers are recomputed during backward: they must attend the same way as in the forward pass.
    losses, grads = [], []
    for checkpointing in (False, True):
        cfg, problem, data = built(
            causal_config(
                tiny_llama, qa_jsonl, tmp_path, training={"adapter": "none"},
                architecture={"gradient_checkpointing": checkpointing},
            )
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg, problem, str(tiny_llama)).float().train()
        batch = problem.collate(data.train, [0, 1, 2, 3], train=True)
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # one padding-free row
        loss_sum, count = problem.loss(model, batch)
        (loss_sum / count).backward()
        losses.append(float(loss_sum / count))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_batching_modes_and_padding(tiny_llama, qa_jsonl, tmp_path):
    lengths = np.random.default_rng(1).integers(10, 120, 300)
    gen = lambda: 0  # noqa: E731  (the seed)
    plain = list(TrainBatches(lengths, 8, gen(), False))
    grouped = list(TrainBatches(lengths, 8, gen(), False, "group_by_length"))
    packed = list(TrainBatches(lengths, 4, gen(), False, "packing", capacity=128))
    assert sorted(i for b in plain for i in b) == sorted(i for b in grouped for i in b)
    assert sorted(i for b in packed for bin_ in b for i in bin_) == list(range(300))
    assert padding_share(lengths, grouped) < padding_share(lengths, plain) / 3
    assert padding_share(lengths, packed) < 0.05
    # the same seed gives the same epochs
    assert plain == list(TrainBatches(lengths, 8, gen(), False))
    # two processes with half the batch see exactly the same global batches
    shards = [TrainBatches(lengths, 4, gen(), False, rank=r, world=2) for r in (0, 1)]
    for whole, first, second in zip(list(TrainBatches(lengths, 8, gen(), True)), *shards):
        assert sorted(whole) == sorted(first + second)
    # an epoch can be rebuilt and resumed part-way
    resumed = TrainBatches(lengths, 8, gen(), False)
    resumed.set_epoch(0, skip=5)
    assert list(resumed) == plain[5:]
    dropped = TrainBatches(lengths, 8, gen(), True)
    assert len(list(dropped)) == len(dropped) == 300 // 8


def test_packed_training_runs_end_to_end(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    from tunelab.training.loop import train

    cfg = load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path, training={"packing": True, "batch_size": 2}))
    result = train(cfg)
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    check = json.loads((result.run_dir / "data_check.json").read_text())
    assert check["padding_share"]["packing"] < 0.05


def test_second_build_reads_the_cache(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    data = causal_config(tiny_llama, qa_jsonl, tmp_path)
    _, _, first = built(data)
    _, _, second = built(data)
    assert not first.info["cached"] and second.info["cached"]
    assert np.array_equal(first.train.input_ids, second.train.input_ids)
    assert second.validation_examples == first.validation_examples
    # a changed setting or changed data means a new key
    changed = dict(data, tokenizer={"max_length": 64})
    _, _, third = built(changed)
    assert not third.info["cached"]
    copy = tmp_path / "copy.jsonl"
    copy.write_text(qa_jsonl.read_text() + json.dumps({"question": "new", "answer": "row"}) + "\n")
    data["dataset"] = dict(data["dataset"], train_dataframe=str(copy))
    _, _, fourth = built(data)
    assert not fourth.info["cached"] and fourth.info["train_rows"] == first.info["train_rows"] + 1


def test_rows_in_both_splits_are_dropped_from_training(tiny_llama, tmp_path, isolated_cache):
    path = tmp_path / "dups.jsonl"
    rows = [{"question": f"q{i % 10}", "answer": f"a{i % 10}"} for i in range(40)]  # each row 4 times
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, _, data = built(causal_config(tiny_llama, path, tmp_path, dataset={"validation_size": 3}))
    assert data.info["deduplicated"] > 0
    assert data.info["train_rows"] + data.info["deduplicated"] + data.info["validation_rows"] == 40


def report_for(tiny_llama, tmp_path, rows, **sections):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg, _, data = built(causal_config(tiny_llama, path, tmp_path, **sections))
    return cfg, compute_report(data.train, cfg, str(path), data.info["format"])


def test_check_catches_all_labels_masked(tiny_llama, tmp_path, isolated_cache):
    rows = [{"question": f"q{i}", "answer": ""} for i in range(10)]
    cfg, report = report_for(
        tiny_llama, tmp_path, rows, dataset={"use_chat_template": False, "add_eos_token_to_answer": False}
    )
    with pytest.raises(DataError, match="nothing would be trained"):
        enforce(report, cfg)


def test_check_catches_truncated_answers(tiny_llama, tmp_path, isolated_cache):
    rows = [{"question": f"q{i}", "answer": "the quick brown fox jumps over the lazy dog " * 3} for i in range(10)]
    cfg, report = report_for(tiny_llama, tmp_path, rows, tokenizer={"max_length_answer": 8})
    assert report.truncated_share == 1.0
    with pytest.raises(DataError, match="100% of the answers are cut"):
        enforce(report, cfg)
    relaxed = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"max_truncated_share": 1.0})})
    enforce(report, relaxed)


def test_check_catches_a_template_without_eos(tiny_llama, tmp_path, isolated_cache):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    cfg, report = report_for(
        tiny_llama,
        tmp_path,
        rows,
        dataset={"add_eos_token_to_answer": False, "chat_template": str(ASSETS / "no_eos.jinja")},
    )
    assert report.rows_without_eos == report.rows
    with pytest.raises(DataError, match="never learn to stop"):
        enforce(report, cfg)


def test_report_counts(tiny_llama, tmp_path, isolated_cache):
    rows = [{"question": "same", "answer": "same"}] * 3 + [{"question": f"q{i}", "answer": f"a{i}"} for i in range(7)]
    rows.append({"question": "empty", "answer": " "})
    cfg, report = report_for(tiny_llama, tmp_path, rows, dataset={"validation_size": 1})
    assert report.rows == 10 or report.rows == 9
    assert report.duplicate_rows >= 1 and report.empty_rows <= 1
    assert report.prompt_tokens["p50"] > 0 and 0 < report.trained_token_share < 1
    assert set(report.padding_share) == {"shuffle", "group_by_length", "packing"}


def test_chat_template_is_saved_with_the_run_and_used_after(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    from tunelab.infer.model import load_run
    from tunelab.training.loop import train

    template = tmp_path / "mine.jinja"
    template.write_text((ASSETS / "no_eos.jinja").read_text())
    cfg = load_config(
        base=causal_config(
            tiny_llama,
            qa_jsonl,
            tmp_path,
            training={"max_steps": 1},
            dataset={"chat_template": str(template)},
            prediction={"max_length_inference": 2},
        )
    )
    result = train(cfg)
    template.unlink()  # later commands must not need the original file
    loaded = load_run(result.run_dir)
    assert loaded.tokenizer.chat_template == (ASSETS / "no_eos.jinja").read_text()
    prompt = loaded.problem.renderer.prompt_text([{"role": "user", "content": "hi"}])
    assert prompt == "[user] hi\n[assistant] "


def test_test_dataframe_is_evaluated_after_training(tiny_llama, qa_jsonl, tmp_path, isolated_cache):
    from tunelab.training.loop import train

    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(qa_jsonl.read_text().splitlines(keepends=True)[:6]))
    cfg = load_config(
        base=causal_config(
            tiny_llama,
            qa_jsonl,
            tmp_path,
            training={"max_steps": 2},
            dataset={"test_dataframe": str(test_file)},
            prediction={"max_length_inference": 2},
        )
    )
    result = train(cfg)
    assert {"loss", "perplexity", "bleu"} <= set(result.metrics["test"])
    assert (result.run_dir / "test_predictions.csv").is_file()


def test_hub_dataset_names_fail_in_one_line_offline(monkeypatch):
    from tunelab.data.readers import iter_records

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="need the network") as err:
        list(iter_records("tatsu-lab/alpaca@train"))
    assert "tatsu-lab/alpaca@train" in str(err.value)
