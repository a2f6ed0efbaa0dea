"""train.py's pieces, in process."""

import torch
import torch.nn.functional as F

import train
from model import Net


def test_momentum_sgd_is_bitwise_torch_sgd():
    torch.manual_seed(0)
    ours_model, ref_model = Net(), Net()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = train.MomentumSGD(ours_model.parameters(), lr=0.01, momentum=0.5)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.5)
    for step in range(5):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            torch.manual_seed(step)  # the same dropout masks
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for buf, p in zip(ours.momentum_buffers, ref_model.parameters(), strict=True):
        assert torch.equal(buf, ref.state[p]["momentum_buffer"])


def test_state_dict_round_trips_and_loads_into_torch_sgd():
    model = Net()
    opt = train.MomentumSGD(model.parameters(), lr=0.1, momentum=0.9)
    for buf in opt.momentum_buffers:
        buf.normal_()
    state = opt.state_dict()
    ref = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref.load_state_dict(state)
    for buf, p in zip(opt.momentum_buffers, model.parameters(), strict=True):
        assert torch.equal(ref.state[p]["momentum_buffer"], buf)
    other = train.MomentumSGD(model.parameters(), lr=0.1, momentum=0.9)
    shared = other.momentum_buffers[0]
    other.load_momentum(state)
    assert other.momentum_buffers[0] is shared  # loaded in place
    assert all(
        torch.equal(a, b) for a, b in zip(other.momentum_buffers, opt.momentum_buffers, strict=True)
    )


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = train.epoch_order(1, 3, 1000)
    assert torch.equal(a, train.epoch_order(1, 3, 1000))
    assert not torch.equal(a, train.epoch_order(1, 4, 1000))
    assert sorted(a.tolist()) == list(range(1000))
    assert train.batches_per_epoch(60000, 64) == 938
