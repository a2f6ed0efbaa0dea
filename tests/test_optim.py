"""optim.py against torch.optim, bitwise, in process."""

import pytest
import torch
import torch.nn.functional as F

import optim
from model import Net


def train_both(name, ours_kwargs, reference, steps=6):
    torch.manual_seed(0)
    ours_model, ref_model = Net(), Net()
    ref_model.load_state_dict(ours_model.state_dict())
    params = list(ours_model.parameters())
    ours = optim.make(name, params, state=optim.new_state(name, params), **ours_kwargs)
    ref = reference(ref_model.parameters())
    for step in range(steps):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            torch.manual_seed(step)  # the same dropout masks
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
    return ours_model, ours, ref_model, ref


def test_momentum_sgd_is_bitwise_torch_sgd():
    ours_model, ours, ref_model, ref = train_both(
        "sgd",
        dict(lr=0.01, momentum=0.5),
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5, foreach=False),
    )
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for s, p in zip(ours.state, ref_model.parameters(), strict=True):
        assert torch.equal(s["momentum_buffer"], ref.state[p]["momentum_buffer"])


def test_adam_is_bitwise_torch_adam():
    ours_model, ours, ref_model, ref = train_both(
        "adam",
        dict(lr=0.005, momentum=0.0),
        lambda p: torch.optim.Adam(p, lr=0.005, foreach=False),
    )
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for s, p in zip(ours.state, ref_model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s[key], ref.state[p][key]), key


@pytest.mark.parametrize(
    "name, reference",
    [
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        ("adam", lambda p: torch.optim.Adam(p, lr=0.1)),
    ],
)
def test_state_dict_loads_into_torch_and_back_in_place(name, reference):
    model = Net()
    params = list(model.parameters())
    opt = optim.make(name, params, 0.1, 0.9, optim.new_state(name, params))
    for t in opt.tensors():
        t.uniform_(0.1, 1.0)
    state = opt.state_dict()
    ref = reference(model.parameters())
    ref.load_state_dict(state)
    for s, p in zip(opt.state, params, strict=True):
        for key, tensor in s.items():
            assert torch.equal(ref.state[p][key], tensor), key
    other = optim.make(name, params, 0.1, 0.9, optim.new_state(name, params))
    shared = other.tensors()[0]
    other.load_state(state)
    assert other.tensors()[0] is shared  # loaded in place: workers may already hold it
    assert all(torch.equal(a, b) for a, b in zip(other.tensors(), opt.tensors(), strict=True))


def test_state_that_does_not_fit_is_refused():
    params = list(Net().parameters())
    sgd = optim.make("sgd", params, 0.1, 0.5, optim.new_state("sgd", params))
    adam = optim.make("adam", params, 0.1, 0.5, optim.new_state("adam", params))
    with pytest.raises(ValueError, match="no adam state"):
        adam.load_state(sgd.state_dict())
    bad = sgd.state_dict()
    bad["state"][0]["momentum_buffer"] = torch.full_like(
        bad["state"][0]["momentum_buffer"], float("nan")
    )
    with pytest.raises(ValueError, match="not finite"):
        sgd.load_state(bad)
    bad["state"][0]["momentum_buffer"] = torch.zeros(3)
    with pytest.raises(ValueError, match="does not match"):
        sgd.load_state(bad)
