"""optimizers.py against torch.optim, bitwise, in process."""

import pytest
import torch
import torch.nn.functional as F

from mnist_hogwild.learn import optimizers
from model import Net


def train_both(name, ours_kwargs, reference, steps=6):
    torch.manual_seed(0)
    ours_model, ref_model = Net(), Net()
    ref_model.load_state_dict(ours_model.state_dict())
    params = list(ours_model.parameters())
    ours = optimizers.make(
        name, params, state=optimizers.optimizer_class(name).new_state(params), **ours_kwargs
    )
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


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.7, 0.9)], ids=["torch's", "fast recipe's"])
def test_adam_is_bitwise_torch_adam(betas):
    ours_model, ours, ref_model, ref = train_both(
        "adam",
        dict(lr=0.005, momentum=0.0, betas=betas),
        lambda p: torch.optim.Adam(p, lr=0.005, betas=betas, foreach=False),
        steps=40,  # long enough for the moments' history to matter to the floor
    )
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for s, p in zip(ours.state, ref_model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s[key], ref.state[p][key]), key
    assert ours.state_dict()["param_groups"][0]["betas"] == betas


def one_adam_step(grad, exp_avg, exp_avg_sq, lr=0.001):
    """How far one step of our Adam moves a weight vector from 0, given its
    gradient and the shared moments as they are when the step starts."""
    p = torch.zeros_like(grad, requires_grad=True)
    state = [{"step": torch.zeros(()), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}]
    adam = optimizers.make("adam", [p], lr, 0.0, state)
    p.grad = grad
    adam.step()
    return p.detach().abs().max().item() / lr


class LandsOnFirstRead(torch.Tensor):
    """exp_avg_sq whose first read after its own update (the denominator) lets
    another worker's write land in exp_avg: workers that started together
    update the same tensors at the same moment."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if getattr(func, "__name__", "") not in ("mul_", "addcmul_") and cls.pending:
            cls.pending.pop()()
        return out


def test_adam_divides_by_the_moments_of_one_read_when_another_worker_writes():
    # Element 0: this worker's gradient is 0 (a dropped-out channel), so its
    # moments are 0 when its denominator is formed; the other worker's
    # gradient lands in exp_avg right after. Dividing that by eps would move
    # the weight by lr * 1e5 and more.
    exp_avg = torch.zeros(2)
    LandsOnFirstRead.pending = [lambda: exp_avg[0].add_(0.1 * 0.05)]
    exp_avg_sq = torch.zeros(2).as_subclass(LandsOnFirstRead)
    moved = one_adam_step(torch.tensor([0.0, 0.05]), exp_avg, exp_avg_sq)
    assert not LandsOnFirstRead.pending  # the write did land mid-step
    assert moved < 10, moved


def test_adam_step_stays_a_few_lr_when_a_write_to_exp_avg_sq_was_lost():
    # A racing in-place update kept the other worker's gradient in exp_avg
    # but lost it from exp_avg_sq.
    moved = one_adam_step(torch.tensor([0.0]), torch.tensor([0.005]), torch.tensor([0.0]))
    assert moved < 10, moved


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
    opt = optimizers.make(
        name, params, 0.1, 0.9, optimizers.optimizer_class(name).new_state(params)
    )
    for t in opt.tensors():
        t.uniform_(0.1, 1.0)
    state = opt.state_dict()
    ref = reference(model.parameters())
    ref.load_state_dict(state)
    for s, p in zip(opt.state, params, strict=True):
        for key, tensor in s.items():
            assert torch.equal(ref.state[p][key], tensor), key
    other = optimizers.make(
        name, params, 0.1, 0.9, optimizers.optimizer_class(name).new_state(params)
    )
    shared = other.tensors()[0]
    other.load_state(state)
    assert other.tensors()[0] is shared  # loaded in place: workers may already hold it
    assert all(torch.equal(a, b) for a, b in zip(other.tensors(), opt.tensors(), strict=True))


def test_state_that_does_not_fit_is_refused():
    params = list(Net().parameters())
    sgd = optimizers.make(
        "sgd", params, 0.1, 0.5, optimizers.optimizer_class("sgd").new_state(params)
    )
    adam = optimizers.make(
        "adam", params, 0.1, 0.5, optimizers.optimizer_class("adam").new_state(params)
    )
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


def test_net_dropout_rate_holds_no_weights():
    assert Net(0.1).state_dict().keys() == Net().state_dict().keys()
    net = Net(0.0).train()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), net(x))  # no dropout at rate 0, even in training
