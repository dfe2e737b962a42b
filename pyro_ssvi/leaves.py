"""Which trainable tensors a loss depends on, so that SSVI can name those it would not train.

A model wrapped in a function (``def model(x, y=None): return net(x, y)``) hides ``net``'s
parameters from everything but autograd. :class:`BackwardLeaves` watches the ``backward()``
calls of one step and collects the leaf tensors each differentiates (the ``AccumulateGrad``
nodes of the graph); :func:`untrained_message` turns the ones no optimizer holds into an error
message that says how to pass them.
"""

from __future__ import annotations

import inspect
from typing import Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["BackwardLeaves", "untrained_message"]


class BackwardLeaves(TorchFunctionMode):
    """Inside, every ``Tensor.backward()`` first records the leaf tensors that require grad and
    that the differentiated tensor depends on (``leaves``: id -> tensor). One step only: every
    torch call pays a Python dispatch while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.leaves: Dict[int, Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is Tensor.backward and args and args[0].requires_grad:
            self._collect(args[0])
        return func(*args, **(kwargs or {}))

    def _collect(self, tensor: Tensor) -> None:
        if tensor.grad_fn is None:
            self.leaves[id(tensor)] = tensor
            return
        seen, stack = set(), [tensor.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
            if variable is not None:
                self.leaves[id(variable)] = variable
            stack.extend(next_node for next_node, _ in node.next_functions)


def _module_names(model) -> Dict[int, str]:
    """id(parameter) -> a readable name, from ``model`` if it is a module, else from the modules
    its code refers to (closure variables and globals); for error messages only."""
    modules: Dict[str, nn.Module] = {}
    if isinstance(model, nn.Module):
        modules["model"] = model
    else:
        target = getattr(model, "func", model)  # functools.partial and Pyro's handler wrappers
        try:
            refs = inspect.getclosurevars(target)
            candidates = {**refs.globals, **refs.nonlocals}
        except TypeError:
            candidates = {}
        modules.update({k: v for k, v in candidates.items() if isinstance(v, nn.Module)})
    return {id(p): f"{owner}.{name}" for owner, m in modules.items() for name, p in m.named_parameters()}


def untrained_message(
    leaves: Dict[int, Tensor], trained: Iterable[Tensor], model, step_inputs, guide_params: Iterable[Tensor],
    torch_optimizer: bool,
) -> Optional[str]:
    """An error message naming the leaves that no optimizer updates, or None if there are none.

    Tensors passed to the step (inputs that require grad) are the caller's business and ignored.
    """
    known = {id(t) for t in trained}
    known.update(id(t) for t in tree_flatten(step_inputs)[0] if torch.is_tensor(t))
    missing: List[Tensor] = [t for i, t in leaves.items() if i not in known]
    if not missing:
        return None
    guide_ids = {id(p) for p in guide_params}
    if torch_optimizer and any(id(t) in guide_ids for t in missing):
        return (
            "The torch optimizer does not hold the guide's parameters, so the guide would never train. Call "
            "guide(*args) once to create them, then build the optimizer over guide.parameters() and the "
            "model's parameters."
        )
    names = _module_names(model)
    shown = ", ".join(names.get(id(t), f"a tensor of shape {list(t.shape)}") for t in missing[:6])
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    if torch_optimizer:
        how = "add them to the torch optimizer (e.g. its param groups over guide.parameters() and net.parameters())"
    else:
        how = (
            "pass the module itself as the model, or register it inside the model function with "
            "pyro.module('net', net) (or make it a PyroModule), so that Pyro sees its parameters"
        )
    return (
        f"SSVI would not train {len(missing)} tensor(s) that the loss depends on: {shown}{more}. They "
        f"require grad but no optimizer holds them (e.g. an nn.Module called inside a model function). To "
        f"train them, {how}; to keep them fixed, call requires_grad_(False) on them."
    )
