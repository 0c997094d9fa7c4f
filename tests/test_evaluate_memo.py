"""The Evaluator embeds each split once per state of the weights (issue 12, item 5).

The final report needs train, val and test features for the test kNN and for both linear
probes; the last epoch's val kNN needs train and val. Each is embedded once, and the numbers
are those of embedding every set afresh (`extract_features`, `knn_top1_ks`, `linear_probe`
called directly, as the evaluation did before the memo).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysl.config import DataConfig, EvalConfig
from raysl.data import load_splits
from raysl.evaluate import Evaluator, extract_features, knn_top1_ks, linear_probe


class _Net(nn.Module):
    feature_dim = 24

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.proj = nn.Linear(6 * 16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.norm(self.conv(x)).relu(), 4)
        return self.proj(x.flatten(1))


class _Counted:
    """The eval view (uint8 -> float), counting the images it is given."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return x.float() / 16


@pytest.fixture
def setup():
    splits = load_splits(DataConfig(source="digits"), seed=0)
    cfg = EvalConfig(knn_k=[20, 5], linear_probe=True, probe_epochs=30, batch_size=256)
    view = _Counted()
    torch.manual_seed(0)
    net = _Net()
    return Evaluator(cfg, splits, view, torch.device("cpu"), False, 0), splits, net, view


def test_the_final_report_embeds_each_split_once_and_scores_as_before(setup):
    evaluator, splits, net, view = setup
    n_train, n_val, n_test = len(splits.train), len(splits.val), len(splits.test)
    val_knn = evaluator.knn(net, "val")  # the last epoch's monitoring
    assert view.images == n_train + n_val
    final = evaluator.final(net)
    assert view.images == n_train + n_val + n_test  # before: 3 (train + val) + 2 test

    def feats(images: torch.Tensor) -> torch.Tensor:
        return extract_features(net, images, lambda x: x.float() / 16, 256, torch.device("cpu"))

    train, val, test = (
        feats(splits.train.images),
        feats(splits.val.images),
        feats(splits.test.images),
    )
    ks = [20, 5]
    want = knn_top1_ks(train, splits.train.labels, val, splits.val.labels, 10, ks, 0.1)
    assert val_knn == {
        "val/knn_top1": want[20], "val/knn_top1_k20": want[20], "val/knn_top1_k5": want[5],
    }  # fmt: skip
    bank, bank_labels = torch.cat([train, val]), torch.cat([splits.train.labels, splits.val.labels])
    want = knn_top1_ks(bank, bank_labels, test, splits.test.labels, 10, ks, 0.1)
    assert final["test/knn_top1_k20"] == want[20] and final["test/knn_top1_k5"] == want[5]
    probe = {"num_classes": 10, "epochs": 30, "lr": 0.1, "seed": 0}
    on_val = linear_probe(train, splits.train.labels, {"v": (val, splits.val.labels)}, **probe)
    on_test = linear_probe(bank, bank_labels, {"t": (test, splits.test.labels)}, **probe)
    assert final["val/linear_top1"] == on_val["v"]
    assert final["test/linear_top1"] == on_test["t"]


def test_changed_weights_are_embedded_again(setup):
    evaluator, _, net, view = setup
    before = evaluator.knn(net, "val")
    seen = view.images
    assert evaluator.knn(net, "val") == before and view.images == seen  # nothing changed
    with torch.no_grad():
        net.proj.weight.mul_(-1.0).add_(0.3)  # an optimizer step: in place
    after = evaluator.knn(net, "val")
    assert view.images == 2 * seen and after != before
    net.train()
    with torch.no_grad():
        net(torch.rand(64, 1, 8, 8))  # batch-norm statistics move: a buffer changes in place
    evaluator.knn(net, "val")
    assert view.images == 3 * seen
    evaluator.forget()
    evaluator.knn(net, "val")
    assert view.images == 4 * seen


def test_the_monitoring_bank_keeps_its_limit_and_skips_unlabelled_images(setup):
    evaluator, splits, net, view = setup
    splits.train.labels[:10] = -1  # unlabelled, as STL-10's extra images are
    evaluator.cfg = evaluator.cfg.model_copy(update={"bank_limit": 100})
    bank, labels = evaluator._bank(net, include_val=False)
    known = splits.train.labels >= 0
    want = extract_features(
        net, splits.train.images[known][:100], lambda x: x.float() / 16, 256, torch.device("cpu")
    )
    assert torch.equal(bank, want) and torch.equal(labels, splits.train.labels[known][:100])
    assert view.images == 100
