"""Online linear probe and kNN: correct numbers on features with known structure."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from cass_lightning import CASSModule
from cass_lightning.callbacks import OnlineEvaluation
from cass_lightning.data import SyntheticDataModule
from cass_lightning.evaluation import (
    LinearProbe,
    extract_features,
    knn_accuracy,
    knn_predict,
    pooled_features,
)


def clusters(n_per_class: int, num_classes: int, dim: int = 16, noise: float = 0.1):
    centers = torch.nn.functional.normalize(torch.randn(num_classes, dim), dim=1) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centers[labels] + noise * torch.randn(len(labels), dim), labels


def test_knn_on_separated_clusters_is_perfect_and_on_shuffled_labels_near_chance():
    bank, bank_labels = clusters(50, 4)
    queries, query_labels = bank[::5] + 0.01, bank_labels[::5]
    assert knn_accuracy(bank, bank_labels, queries, query_labels, 4, k=10) == 1.0
    shuffled = bank_labels[torch.randperm(len(bank_labels))]
    assert knn_accuracy(bank, shuffled, queries, query_labels, 4, k=10) < 0.6


def test_knn_weights_by_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    votes = knn_predict(bank, labels, torch.tensor([[1.0, 0.0]]), 2, k=2, temperature=0.1)
    cos = torch.nn.functional.cosine_similarity(torch.tensor([[0.9, 0.1]]), bank[:1])
    expected = torch.tensor([[np.exp(1 / 0.1), float(torch.exp(cos / 0.1))]])
    torch.testing.assert_close(votes, expected.float())


def test_probe_learns_separable_features_and_ignores_hidden_labels():
    features, labels = clusters(40, 3)
    probe = LinearProbe(16, 3, lr=0.05)
    for _ in range(100):
        probe.step(features, labels)
    assert float((probe.predict(features) == labels).float().mean()) == 1.0
    before = probe.head.weight.detach().clone()
    loss, accuracy = probe.step(features, torch.full_like(labels, -1))
    assert np.isnan(loss) and np.isnan(accuracy) and torch.equal(before, probe.head.weight)


def test_the_device_step_equals_the_step_and_reads_nothing_back():
    from sync_counter import HostSyncCounter

    features, labels = clusters(6, 3)
    labels[::2] = -1  # half the rows hidden
    probe = LinearProbe(16, 3, lr=0.05)
    twin = LinearProbe(16, 3, lr=0.05)
    twin.load_state_dict(probe.state_dict())
    for _ in range(3):
        loss, accuracy = probe.step(features, labels)
        with HostSyncCounter(active=True) as counter:
            summed, correct, count = twin.step_on_device(features, labels)
        assert counter.calls == []
        assert int(count) == 9 and float(summed) / 9 == pytest.approx(loss, rel=1e-6)
        assert float(correct) / 9 == pytest.approx(accuracy)
        torch.testing.assert_close(twin.head.weight, probe.head.weight)
    before = [
        t.clone() for t in (twin.head.weight, *twin.optimizer.state[twin.head.weight].values())
    ]
    summed, correct, count = twin.step_on_device(features, torch.full_like(labels, -1))
    assert (float(summed), int(correct), int(count)) == (0.0, 0, 0)
    after = (twin.head.weight, *twin.optimizer.state[twin.head.weight].values())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_hook_features_equal_timm_pooled_features():
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=8)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    model(x)
    for arm in ("cnn", "vit"):
        torch.testing.assert_close(model.pooled[arm], pooled_features(getattr(model, arm), x))


@pytest.fixture
def synthetic(tmp_path):
    return SyntheticDataModule(tmp_path, images_per_class=6, val_images_per_class=2,
                               image_size=16, img_size=32, batch_size=6,
                               label_fraction=0.5)  # fmt: skip


def test_train_loader_hides_labels_outside_the_fraction(synthetic):
    synthetic.setup()
    labels = torch.cat([y for _, y in synthetic.train_dataloader()])
    assert int((labels >= 0).sum()) == len(synthetic.labelled) == 18
    assert int((labels == -1).sum()) == 18
    bank, bank_labels = extract_features(
        CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32).cnn,
        synthetic.labelled_eval_dataloader(), "cpu",
    )  # fmt: skip
    assert bank.shape == (18, 512) and bank.dtype == torch.float32 and (bank_labels >= 0).all()


def test_online_evaluation_logs_probe_and_knn_per_arm(synthetic):
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=16)
    online = OnlineEvaluation(every_n_epochs=1, k=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[online])  # fmt: skip
    trainer.fit(model, datamodule=synthetic)
    metrics = trainer.callback_metrics
    for arm in ("cnn", "vit"):
        for key in (f"probe/{arm}_val_acc", f"knn/{arm}_val_acc", f"probe/{arm}_train_loss"):
            assert key in metrics, key
        assert 0.0 <= float(metrics[f"knn/{arm}_val_acc"]) <= 1.0
    # The probes saw only labelled rows and have their own parameters, outside the model.
    assert not any(p is q for p in online.probes["cnn"].parameters() for q in model.parameters())
