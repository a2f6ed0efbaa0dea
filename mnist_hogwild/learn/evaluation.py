"""Test-set evaluation: the loss, accuracy and confusion matrix of a model on
a split. The trainer evaluates with it after every epoch (each node its
shard, combined through Evaluation's sums); the `evaluate` command on any
checkpoint."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_hogwild.learn import data

# Evaluation's memory grows with its batch (conv1's activations alone are
# 23 KB per image); batches are cut to this size whatever --test-batch-size
# asks, so a large value costs no memory, only the speed it no longer gains.
MAX_EVAL_BATCH = 1000


@dataclass
class Evaluation:
    test_loss: float
    accuracy: float  # a fraction in [0, 1]; the log lines print it as a percent
    confusion: torch.Tensor  # [true class, predicted class] counts, int64 on the CPU

    @classmethod
    def from_sums(cls, loss_sum, confusion):
        """From the summed loss and the confusion counts (of one shard or many)."""
        n = max(1, int(confusion.sum()))
        return cls(loss_sum / n, confusion.diagonal().sum().item() / n, confusion)

    def loss_sum(self):
        return self.test_loss * int(self.confusion.sum())

    def per_class(self):
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diagonal() / totals).tolist()


def evaluate(model, split, dataset, batch_size, should_stop=lambda: False):
    """The model's Evaluation on SPLIT, or None if should_stop() turned true.
    SPLIT lives where the model does; the sums stay there until the end."""
    scale, shift = data.normalizer(dataset)
    device = split.images.device
    batch_size = min(batch_size, MAX_EVAL_BATCH)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(data.NUM_CLASSES, data.NUM_CLASSES, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            if should_stop():
                return None
            indices = torch.arange(start, min(start + batch_size, len(split)), device=device)
            x, y = data.make_batch(split, indices, scale, shift)
            output = model(x)
            loss_sum += F.nll_loss(output, y, reduction="sum")
            # One-hot product, not bincount: bincount has no deterministic CUDA
            # kernel (--deterministic), and counts this small are exact in float32.
            truth = F.one_hot(y, data.NUM_CLASSES).float()
            predicted = F.one_hot(output.argmax(dim=1), data.NUM_CLASSES).float()
            confusion += (truth.T @ predicted).long()
    return Evaluation.from_sums(loss_sum.item(), confusion.cpu())
