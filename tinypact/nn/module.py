"""`Module` and `Parameter`: how layers hold state, as in PyTorch's torch.nn.

A Module finds its parameters, buffers and sub-modules by looking at its attributes: a
`Parameter` attribute is a learnable tensor, a name in `self._buffers` is state that is saved but
not learned (batch-norm's running statistics), and a `Module` attribute is a child. Names are
dotted paths (`features.0.weight`), the keys of `state_dict()`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from tinypact.tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module learns: requires a gradient, float32 unless given float64."""

    def __init__(self, data, requires_grad: bool = True):
        array = np.asarray(data.data if isinstance(data, Tensor) else data)
        if array.dtype != np.float64:
            array = array.astype(np.float32)
        super().__init__(array, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class HookHandle:
    """Returned by `Module.register_forward_hook`; `remove()` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: OrderedDict):
        self.hooks, self.id = hooks, HookHandle._next_id
        HookHandle._next_id += 1

    def remove(self) -> None:
        self.hooks.pop(self.id, None)


class Module:
    """Base class of every layer and network: override `forward`, call the module like a function."""

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in list(self.__dict__.get("_forward_hooks", {}).values()):
            replaced = hook(self, args, out)
            out = out if replaced is None else replaced
        return out

    def register_forward_hook(self, hook) -> "HookHandle":
        """Call `hook(module, inputs, output)` after every forward (PyTorch's hook): it may
        return a replacement output. `handle.remove()` unregisters it."""
        hooks = self.__dict__["_forward_hooks"]
        handle = HookHandle(hooks)
        hooks[handle.id] = hook
        return handle

    # --------------------------------------------------------------------------- state
    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Saved in state_dict, not learned (e.g. running_mean)."""
        self._buffers[name] = np.asarray(value)

    def __getattr__(self, name: str):
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            buffers[name] = np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator["Module"]:
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self) -> Iterator[Parameter]:
        for _, parameter in self.named_parameters():
            yield parameter

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for module_name, module in self.named_modules():
            for name, value in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), value

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, by dotted name."""
        state = OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())
        state.update((name, np.array(b, copy=True)) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into this module's parameters and buffers (shapes must match)."""
        own_params = dict(self.named_parameters())
        own_buffers = {name for name, _ in self.named_buffers()}
        expected = set(own_params) | own_buffers
        if strict:
            missing, unexpected = expected - set(state), set(state) - expected
            if missing or unexpected:
                raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, "
                               f"unexpected {sorted(unexpected)}")
        modules = dict(self.named_modules())
        for name, value in state.items():
            if name not in expected:
                continue
            value = np.asarray(value)
            if name in own_params:
                param = own_params[name]
                if value.shape != param.shape:
                    raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape "
                                     f"{param.shape}")
                param.data = value.astype(param.dtype, copy=True)
            else:
                module_name, _, buffer_name = name.rpartition(".")
                module = modules[module_name]
                old = module._buffers[buffer_name]
                if value.shape != np.shape(old):
                    raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape "
                                     f"{np.shape(old)}")
                module._buffers[buffer_name] = value.astype(np.asarray(old).dtype, copy=True)

    # --------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (sets every parameter's .grad to None)."""
        for parameter in self.parameters():
            parameter.grad = None

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                    for name, child in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + (")" if not children else "\n" + "\n".join(children) + "\n)")


class Sequential(Module):
    """Modules applied one after another; children are named 0, 1, 2, ..."""

    def __init__(self, *modules: Module):
        super().__init__()
        for index, module in enumerate(modules):
            setattr(self, str(index), module)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self.children()))

    def __getitem__(self, index: int) -> Module:
        return list(self.children())[index]

    def __len__(self) -> int:
        return len(list(self.children()))

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
