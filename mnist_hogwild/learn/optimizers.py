"""SGD with momentum and Adam whose state lives in shared tensors, with exactly
torch.optim's arithmetic and state_dict format.

Hogwild and optimizer state: the parent creates the state (momentum buffers;
Adam's two moments and its step counts) in shared memory, and every worker's
optimizer points at those very tensors, so all workers update one state
racily, without locks, exactly as they update the weights. The state stays
a single thing the parent can checkpoint and restore; races cost only noise
(once Adam reads each moment once per step: adam_sq_floor says why).

Why not torch.optim itself: its first use imports torch._dynamo, which adds
seconds to every process's start (scripts/optim_import_cost.py measures it;
docs/design.md has the numbers), and it replaces state tensors on
load_state_dict where these must be filled in place. tests/test_optim.py
checks both classes bitwise against torch.optim's single-tensor code paths,
and that torch.optim loads their state_dict().
"""

import torch

from mnist_hogwild.core.tables import OPTIMIZERS, load

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


# Written by one process, Adam's moments obey exp_avg_sq >= exp_avg**2 * bound
# (Cauchy-Schwarz on their two exponential sums, for beta1^2 < beta2), so a
# step moves a weight by a few lr at most. Racing workers break it. They start
# in step and update the same tensor at the same moment: a worker whose own
# gradient is 0 at a weight (a dropped-out channel) reads exp_avg_sq there as
# 0 for its denominator, then reads exp_avg after another worker's gradient
# has landed in it, and divides by eps: the weight moves by about lr * 1e7 and
# training diverges in its first batches (1 run in 4 with Adam on 2
# processes). So a step reads exp_avg once, and floors exp_avg_sq at half the
# bound from that same read: where the moments agree nothing changes (torch's
# arithmetic, bitwise), and a racy step stays a few lr.
def adam_sq_floor(betas):
    b1, b2 = betas
    return 0.5 * (1 - b2) * (1 - b1**2 / b2) / (1 - b1) ** 2


class SharedStateOptimizer:
    """What both optimizers share: the parameters, the per-parameter state
    tensors (shared, filled in place), and torch's state_dict format."""

    name = ""
    # How several machines combine each state tensor at a sync, by its key:
    # COUNTED ones are added up (Adam's step counts: every node's steps
    # happened), the rest are state and are averaged over the nodes.
    counted = ()

    def __init__(self, params, lr, momentum, state, betas=ADAM_BETAS):
        self.params = list(params)
        self.lr, self.momentum, self.betas = lr, momentum, tuple(betas)
        self.state = state
        if len(self.state) != len(self.params):
            raise ValueError("one state dict per parameter")

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def tensors(self):
        """Every state tensor (to share them, or to send them to the workers)."""
        return [t for s in self.state for t in s.values()]

    @classmethod
    def new_state(cls, params):
        """Fresh state for PARAMS, one dict of tensors per parameter (what the
        parent puts in shared memory)."""
        raise NotImplementedError

    def hyperparameters(self):
        raise NotImplementedError

    @classmethod
    def settings(cls, config):
        """The settings of CONFIG this optimizer uses besides the rate, for the
        start line (--momentum means nothing to Adam)."""
        raise NotImplementedError

    def counters(self):
        """The state tensors that nodes add up at a sync (see COUNTED)."""
        return [t for s in self.state for k, t in s.items() if k in self.counted]

    def moments(self):
        """The state tensors that nodes average at a sync."""
        return [t for s in self.state for k, t in s.items() if k not in self.counted]

    def state_dict(self):
        """torch.optim's format, tensors copied to the CPU (the workers go on
        training meanwhile; a checkpoint loads on either device)."""
        return {
            "state": {
                i: {k: t.detach().to("cpu", copy=True) for k, t in s.items()}
                for i, s in enumerate(self.state)
            },
            "param_groups": [{**self.hyperparameters(), "params": list(range(len(self.params)))}],
        }

    def load_state(self, state_dict):
        """Copy a state_dict's tensors into ours, in place (they may already be
        shared with workers). ValueError if they do not fit this optimizer."""
        try:
            saved = state_dict["state"]
            entries = [saved.get(i) for i in range(len(self.params))]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"no {self.name} state ({e!r})") from None
        for i, (mine, theirs) in enumerate(zip(self.state, entries, strict=True)):
            if theirs is None:  # a parameter that never had a gradient
                for t in mine.values():
                    t.zero_()
                continue
            if not isinstance(theirs, dict) or set(theirs) != set(mine):
                raise ValueError(f"parameter {i} has no {self.name} state {sorted(mine)}")
            for key, t in mine.items():
                value = theirs[key]
                if not isinstance(value, torch.Tensor) or value.shape != t.shape:
                    raise ValueError(f"{key} of parameter {i} does not match parameter {i}")
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{key} of parameter {i} is not finite")
                t.copy_(value)


class MomentumSGD(SharedStateOptimizer):
    """buf = momentum * buf + grad; param -= lr * buf (torch.optim.SGD with
    dampening 0, no Nesterov, no weight decay: the sample's settings). A zero
    buffer at the first step gives torch's clone(grad) bitwise."""

    name = "sgd"

    @classmethod
    def settings(cls, config):
        return f"momentum {config.momentum}"

    @classmethod
    def new_state(cls, params):
        return [{"momentum_buffer": torch.zeros_like(p)} for p in params]

    @torch.no_grad()
    def step(self):
        for p, s in zip(self.params, self.state, strict=True):
            if p.grad is not None:
                buf = s["momentum_buffer"]
                buf.mul_(self.momentum).add_(p.grad)
                p.add_(buf, alpha=-self.lr)

    def hyperparameters(self):
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": 0,
            "weight_decay": 0,
            "nesterov": False,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }


class Adam(SharedStateOptimizer):
    """torch.optim.Adam's single-tensor arithmetic (eps 1e-8, no weight decay,
    no AMSGrad), with exp_avg_sq floored where racing
    workers left it short (adam_sq_floor). --momentum does not apply to it."""

    name = "adam"
    counted = ("step",)

    def __init__(self, params, lr, momentum, state, betas=ADAM_BETAS):
        super().__init__(params, lr, momentum, state, betas)
        self.sq_floor = adam_sq_floor(self.betas)  # once, not at every step

    @classmethod
    def settings(cls, config):
        return f"betas {config.betas[0]}/{config.betas[1]}, eps {ADAM_EPS:g}"

    @classmethod
    def new_state(cls, params):
        return [
            {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
            for p in params
        ]

    @torch.no_grad()
    def step(self):
        beta1, beta2 = self.betas
        for p, s in zip(self.params, self.state, strict=True):
            if p.grad is None:
                continue
            grad, exp_avg, exp_avg_sq, step_t = p.grad, s["exp_avg"], s["exp_avg_sq"], s["step"]
            step_t += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            # One read of each moment: the other workers write them meanwhile.
            first = exp_avg.clone()
            second = torch.maximum(exp_avg_sq, first.square().mul_(self.sq_floor))
            denom = second.sqrt_().div_(bias_correction2**0.5).add_(ADAM_EPS)
            p.addcdiv_(first, denom, value=-step_size)

    def hyperparameters(self):
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": ADAM_EPS,
            "weight_decay": 0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": False,
        }


def optimizer_class(name):
    """--optimizer NAME: the class that trains with it, as core/tables.py's
    OPTIMIZERS entry names it (a new optimizer is a subclass above and one
    entry there)."""
    return load(OPTIMIZERS[name].cls)


def make(name, params, lr, momentum, state=None, betas=ADAM_BETAS):
    """The NAME optimizer over PARAMS, on STATE (fresh if None). Each uses its
    own settings: SGD MOMENTUM, Adam's BETAS."""
    cls = optimizer_class(name)
    params = list(params)
    state = cls.new_state(params) if state is None else state
    return cls(params, lr, momentum, state, betas)


def from_config(config, params, state=None):
    """The optimizer CONFIG names, with its settings, over PARAMS."""
    return make(config.optimizer, params, config.lr, config.momentum, state, config.betas)
