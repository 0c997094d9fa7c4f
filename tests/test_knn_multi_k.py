"""`eval.knn_k` as a list (issue 12, item 2): every k from one similarity pass, logged by name.

The oracle is a naive float64 loop over the queries of Wu et al. (2018, eq. 7): sort the bank
by cosine similarity, let the k most similar vote with weight exp(s / T).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysl.checkpoint import latest_checkpoint, load_checkpoint
from raysl.config import Config
from raysl.data import load_splits
from raysl.errors import ConfigError
from raysl.evaluate import knn_predict, knn_predict_ks, knn_top1_ks
from raysl.export import encoder_from_state
from raysl.reporting import read_jsonl
from tests.conftest import run_cli


def naive_knn_top1(bank, bank_labels, queries, query_labels, k, temperature, classes) -> float:
    """Top-1 (%) of weighted cosine kNN, one query at a time, in float64."""
    bank, queries = np.asarray(bank, np.float64), np.asarray(queries, np.float64)
    bank_labels, query_labels = np.asarray(bank_labels), np.asarray(query_labels)
    hits = 0
    for q, y in zip(queries, query_labels):
        sims = bank @ q
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(classes)
        for i in nearest:
            votes[bank_labels[i]] += np.exp(sims[i] / temperature)
        hits += int(np.argmax(votes) == y)
    return 100.0 * hits / len(queries)


def clusters(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    feats = centres[labels] + 1.5 * torch.randn(n, dim, generator=g)
    return F.normalize(feats, dim=1), labels


def test_every_k_matches_the_naive_loop_and_a_call_of_its_own():
    feats, labels = clusters(750, 5, 12, seed=0)
    bank, bank_labels, queries, query_labels = feats[:600], labels[:600], feats[600:], labels[600:]
    ks = [200, 20, 1, 7]
    got = knn_top1_ks(bank, bank_labels, queries, query_labels, 5, ks, 0.1)
    assert list(got) == ks
    for k in ks:
        want = naive_knn_top1(bank, bank_labels, queries, query_labels, k, 0.1, 5)
        assert got[k] == pytest.approx(want, abs=1e-4), k  # one query is 0.67 %
    preds = knn_predict_ks(bank, bank_labels, queries, 5, ks, 0.1, chunk=64)  # chunks agree
    for row, k in zip(preds, ks):
        assert torch.equal(row, knn_predict(bank, bank_labels, queries, 5, k, 0.1))
    assert len({round(v, 6) for v in got.values()}) > 1, "the k's must give different answers"


def test_the_similarities_and_top_max_k_are_computed_once_per_chunk(monkeypatch):
    feats, labels = clusters(400, 4, 8, seed=2)
    bank, bank_labels, queries = feats[:300], labels[:300], feats[300:]
    calls = []
    topk = torch.Tensor.topk

    def counted(self, k, *args, **kwargs):
        calls.append(k)
        return topk(self, k, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", counted)
    knn_predict_ks(bank, bank_labels, queries, 4, [50, 5, 20], 0.1, chunk=40)
    assert calls == [50, 50, 50]  # 3 chunks of queries, one top-50 each


def test_a_list_of_k_validates_and_a_bad_one_names_the_key():
    assert Config().override({"eval.knn_k": [200, 20]}).eval.ks == (200, 20)
    assert Config().eval.ks == (200,)
    for bad in ([], [20, 20], [0, 5], ["20"], [True], 0, "many"):
        with pytest.raises(ConfigError, match=r"eval\.knn_k") as info:
            Config().override({"eval.knn_k": bad})
        assert len(str(info.value).splitlines()) == 1, str(info.value)


def test_raysl_train_logs_every_k_by_name_and_each_equals_a_naive_knn(tmp_path: Path):
    """A tiny `raysl train` on digits: the logged value at each k is the naive kNN of the
    trained encoder's features (val: bank = the train split; test: bank = train + val)."""
    out = tmp_path / "run"
    sets = {
        "epochs": 1,
        "data.source": "digits",
        "data.batch_size": 128,
        "data.train_fraction": 0.5,  # and the bank is the subset
        "model.width": 8,
        "model.proj_hidden_dim": 64,
        "model.proj_dim": 32,
        "eval.knn_k": [50, 5],
        "eval.batch_size": 4096,  # one forward pass per split, here and in the run
        "optim.lr": 0.1,
    }
    config = tmp_path / "digits.yaml"
    config.write_text("name: multi_k\nconfig: {}\n")
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = run_cli("train", str(config), "--out", str(out), "-q", *args)
    assert proc.returncode == 0, proc.stderr

    epoch = read_jsonl(out / "metrics.jsonl", "epoch")[-1]
    final = read_jsonl(out / "metrics.jsonl", "finish")[-1]
    for split, record in (("val", epoch), ("test", final)):
        names = {k for k in record if k.startswith(f"{split}/knn")}
        assert names == {f"{split}/knn_top1", f"{split}/knn_top1_k50", f"{split}/knn_top1_k5"}
        assert record[f"{split}/knn_top1"] == record[f"{split}/knn_top1_k50"]  # the first k

    cfg = Config().override(sets)
    splits = load_splits(cfg.data, cfg.seed)
    assert len(splits.train) == round(0.5 * 1293)
    encoder, _ = encoder_from_state(load_checkpoint(latest_checkpoint(out / "checkpoints")))
    train_val = torch.cat([splits.train.images, splits.val.images])  # the final bank, in order
    with torch.no_grad():
        feats = {
            name: F.normalize(encoder(images), dim=1)
            for name, images in (
                ("train", splits.train.images),
                ("val", splits.val.images),
                ("test", splits.test.images),
                ("train+val", train_val),
            )
        }
    both_labels = torch.cat([splits.train.labels, splits.val.labels])
    cases = {
        "val": (feats["train"], splits.train.labels, feats["val"], splits.val.labels, epoch),
        "test": (feats["train+val"], both_labels, feats["test"], splits.test.labels, final),
    }
    for split, (bank, labels, queries, query_labels, record) in cases.items():
        for k in (50, 5):
            want = naive_knn_top1(bank, labels, queries, query_labels, k, 0.1, 10)
            assert record[f"{split}/knn_top1_k{k}"] == pytest.approx(want, abs=1e-4), (split, k)
