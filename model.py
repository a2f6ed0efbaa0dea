"""The network, Net: only the nn.Module. Training, evaluate, infer, export and
serve all build it from this file; the training loop is in the package
(mnist_hogwild/training/). An image holds the copy it was built with."""

import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The classic pytorch/examples MNIST Hogwild network (about 22k weights)."""

    def __init__(self, dropout=0.5):
        super().__init__()
        # DROPOUT is the rate of both dropout layers in training; it holds no
        # weights, so a checkpoint loads into a Net of any rate.
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        # (flatten, not view: the training model's convolutions run channels-last)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, self.dropout, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)
