import torch

from model import Net


def test_output_is_one_log_probability_per_class_and_eval_mode_is_deterministic():
    net = Net().eval()
    x = torch.randn(7, 1, 28, 28)
    out = net(x)
    assert out.shape == (7, 10)
    assert torch.equal(out, net(x))  # no dropout at evaluation
    # Each image is classified on its own: a batch gives what single images give.
    assert torch.allclose(out[3:4], net(x[3:4]), atol=1e-6)


def test_training_mode_applies_dropout():
    net = Net().train()
    x = torch.randn(7, 1, 28, 28)
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.equal(a, net(x))
    torch.manual_seed(0)
    assert torch.equal(a, net(x))  # seeded per batch: the workers' exact resume relies on it


def test_parameter_count_matches_the_sample_net():
    # conv1 260 + conv2 5020 + fc1 16050 + fc2 510
    assert sum(p.numel() for p in Net().parameters()) == 21840
