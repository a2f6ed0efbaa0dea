import torch

from model import Net


def test_output_is_log_probabilities_per_class():
    net = Net().eval()
    out = net(torch.randn(7, 1, 28, 28))
    assert out.shape == (7, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(7), atol=1e-5)


def test_parameter_count_matches_the_sample_net():
    # conv1 260 + conv2 5020 + fc1 16050 + fc2 510
    assert sum(p.numel() for p in Net().parameters()) == 21840
