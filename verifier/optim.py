"""The optimizers, written out: the protocol defines the update, not a torch version.

torch.optim's internals (and its state_dict layout) change between releases; a verifier on
another version must still reproduce a solver's step bit for bit. So the three optimizers
are a few in-place tensor ops each, in a fixed order, and their state is a flat map of
named tensors that goes into the checkpoint as it is:

    sgd       p -= lr * g                                          (no state)
    momentum  b = 0.9 b + g;  p -= lr * b                          ("momentum/<param>")
    adam      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2          ("m/<param>", "v/<param>")
              p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)  ("beta1_power", "beta2_power")

Adam keeps b1^t and b2^t as float64 scalars multiplied once per step rather than computing
b**t with pow(), whose last bit can depend on the C library.
"""
from __future__ import annotations

import math

import torch

KINDS = ("sgd", "momentum", "adam")
MOMENTUM = 0.9
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def slot_names(kind: str, param_names: list[str]) -> list[str]:
    """The optimizer state keys for these parameters (the checkpoint's `opt` map)."""
    if kind == "sgd":
        return []
    if kind == "momentum":
        return [f"momentum/{n}" for n in param_names]
    return ["beta1_power", "beta2_power"] + [f"{s}/{n}" for s in ("m", "v") for n in param_names]


def initial_state(kind: str, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh optimizer state: zero buffers and beta powers of 1."""
    if kind not in KINDS:
        raise ValueError(f"unknown optimizer {kind!r} (one of {', '.join(KINDS)})")
    state = {}
    for key in slot_names(kind, list(params)):
        if key.endswith("_power"):
            state[key] = torch.tensor(1.0, dtype=torch.float64)
        else:
            state[key] = torch.zeros_like(params[key.split("/", 1)[1]])
    return state


SLICE = 1 << 22  # elements updated at a time: Adam's temporary is one slice, not a whole tensor


def _slices(*tensors: torch.Tensor):
    """The same elementwise update, slice by slice (each op is per element: the bits are the
    same), so that a 100M-parameter model does not need a second copy of its largest tensor."""
    if tensors[0].numel() <= SLICE or not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for i in range(0, flat[0].numel(), SLICE):
        yield tuple(f[i:i + SLICE] for f in flat)


class Optimizer:
    """Applies one kind of update to a fixed, ordered list of parameters, in place."""

    def __init__(self, kind: str, lr: float, names: list[str], params: list[torch.Tensor],
                 state: dict[str, torch.Tensor]):
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r} (one of {', '.join(KINDS)})")
        self.kind, self.lr, self.names, self.params = kind, lr, names, params
        self.state = state  # tensors on the parameters' device, updated in place
        self.beta1_power = float(state["beta1_power"]) if kind == "adam" else 1.0
        self.beta2_power = float(state["beta2_power"]) if kind == "adam" else 1.0

    @torch.no_grad()
    def update(self, grads: list[torch.Tensor]) -> None:
        if self.kind == "sgd":
            for p, g in zip(self.params, grads):
                p.add_(g, alpha=-self.lr)
        elif self.kind == "momentum":
            for name, p, g in zip(self.names, self.params, grads):
                buf = self.state[f"momentum/{name}"]
                buf.mul_(MOMENTUM).add_(g)
                p.add_(buf, alpha=-self.lr)
        else:
            self._adam(grads)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        self.beta1_power *= BETA1
        self.beta2_power *= BETA2
        step_size = self.lr / (1.0 - self.beta1_power)
        root_bc2 = math.sqrt(1.0 - self.beta2_power)  # sqrt is exactly rounded in IEEE 754
        for name, p, g in zip(self.names, self.params, grads):
            m, v = self.state[f"m/{name}"], self.state[f"v/{name}"]
            for ps, gs, ms, vs in _slices(p, g, m, v):
                ms.mul_(BETA1).add_(gs, alpha=1.0 - BETA1)
                vs.mul_(BETA2).addcmul_(gs, gs, value=1.0 - BETA2)
                denom = vs.sqrt().div_(root_bc2).add_(EPS)
                ps.addcdiv_(ms, denom, value=-step_size)

    def export(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """The state as checkpoint tensors on the CPU (copies unless copy=False)."""
        out = {k: t.detach().to("cpu", copy=copy) for k, t in self.state.items() if not k.endswith("_power")}
        if self.kind == "adam":
            out["beta1_power"] = torch.tensor(self.beta1_power, dtype=torch.float64)
            out["beta2_power"] = torch.tensor(self.beta2_power, dtype=torch.float64)
        return out
