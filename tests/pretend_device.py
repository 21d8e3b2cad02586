"""A pretend accelerator, so the CPU suite catches what only a GPU run used to show: a tensor
left on the host while the model is on the device.

:class:`OnDevice` holds a CPU tensor but reports the device ``meta`` (a ``cuda``-typed
wrapper crashes autograd on a CUDA build of torch without a driver). Inside
:func:`pretend_device`, every op runs on the held CPU tensors, and the rules CUDA enforces
are enforced:

- an op that mixes a device tensor with a CPU tensor of one element or more fails with
  :class:`DeviceMismatch` (CUDA's "Expected all tensors to be on the same device"); CPU
  zero-dimensional tensors pass, as CUDA lets them, and so do CPU index tensors of
  ``t[idx]`` / ``t[idx] = v`` on a device tensor, and ``copy_`` between the two;
- ``.to(DEVICE)``, factories given ``device=DEVICE`` and ``torch.tensor``/``as_tensor``
  with it make device tensors; ``.cpu()`` / ``.to("cpu")`` make plain CPU tensors;
- ``.item()``/``.tolist()`` read device tensors (a host sync on CUDA, allowed), ``.numpy()``
  and ``np.asarray`` of one fail, as on CUDA.

It cannot check DeepSpeed's own placement, NCCL or vLLM: those need the GPU tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")

aten = torch.ops.aten
# Ops whose index arguments may stay on the CPU while ``self`` is on the device (CUDA copies
# them over); the position of the index list in the arguments.
INDEX_OPS = {aten.index.Tensor: 1, aten.index_put.default: 1, aten.index_put_.default: 1,
             aten._index_put_impl_.default: 1}
CROSS_DEVICE_OPS = {aten.copy_.default, aten._to_copy.default}


class DeviceMismatch(RuntimeError):
    """An op met a device tensor and a CPU tensor: a GPU run fails here."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``elem``) that reports :data:`DEVICE` as its device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False) -> OnDevice:
        assert type(elem) is torch.Tensor and elem.device.type == "cpu", type(elem)
        r = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=DEVICE, requires_grad=requires_grad)
        r.elem = elem
        return r

    def __repr__(self) -> str:  # type: ignore[override]
        return f"OnDevice({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _is_cpu(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and not isinstance(x, OnDevice) and x.device.type == "cpu"


def _check(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """CUDA's rule: no op mixes device tensors with CPU tensors of one dimension or more."""
    checked = list(args)
    if func in INDEX_OPS and isinstance(args[0], OnDevice):
        checked[INDEX_OPS[func]] = None  # CPU indices into a device tensor are fine
    flat, _ = tree_flatten((checked, kwargs))
    if not any(isinstance(x, OnDevice) for x in flat):
        return
    host = [x for x in flat if _is_cpu(x) and x.dim() > 0]
    if host:
        raise DeviceMismatch(
            f"{func}: a tensor on the device meets a CPU tensor of shape "
            f"{tuple(host[0].shape)} (on a GPU: Expected all tensors to be on the same device)")


def _run(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if func not in CROSS_DEVICE_OPS:
        _check(func, args, kwargs)
    to_device = kwargs.get("device") == DEVICE
    on_device = any(isinstance(x, OnDevice) for x in tree_flatten((args, kwargs))[0])
    if func is aten._to_copy.default and "device" in kwargs and not to_device:
        on_device = False  # .cpu(), .to("cpu"): a plain CPU tensor comes out
    if func is aten.copy_.default:  # the destination decides where the result lives
        on_device = isinstance(args[0], OnDevice)
    plain_kwargs = {**kwargs, "device": torch.device("cpu")} if to_device else kwargs
    unwrapped = tree_map(lambda x: x.elem if isinstance(x, OnDevice) else x, (args, plain_kwargs))
    out = func(*unwrapped[0], **unwrapped[1])
    if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
        return args[0]  # in place: the caller's tensor (its wrapper) is the result
    if not (on_device or to_device):
        return out
    return tree_map(lambda x: OnDevice(x) if _is_cpu(x) else x, out)


class _DispatchMode(TorchDispatchMode):
    """Factories with ``device=DEVICE`` and ``.to(DEVICE)`` of CPU tensors make device
    tensors; ops on device tensors are checked and run on the held CPU tensors."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


class _FunctionMode(TorchFunctionMode):
    """What does not reach the dispatcher: ``torch.tensor(data, device=DEVICE)`` and host
    reads of a device tensor."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _device(kwargs.get("device")) == DEVICE:
            data = tree_map(lambda x: x.elem if isinstance(x, OnDevice) else x, args)
            return OnDevice(func(*data, **{**kwargs, "device": "cpu"}))
        if args and isinstance(args[0], OnDevice):
            if func in (torch.Tensor.numpy, torch.Tensor.__array__):
                raise DeviceMismatch("numpy() of a tensor on the device (on a GPU: can't "
                                     "convert cuda tensor to numpy; use .cpu() first)")
            if func in (torch.Tensor.tolist, torch.Tensor.item):
                return func(args[0].elem, *args[1:], **kwargs)
        return func(*args, **kwargs)


def _device(d: Any) -> torch.device | None:
    return torch.device(d) if isinstance(d, str | torch.device) else None


@contextlib.contextmanager
def pretend_device() -> Iterator[None]:
    """The rules above, for the code run inside."""
    with _FunctionMode(), _DispatchMode():
        yield


def move_module(module: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """Put every parameter and buffer of ``module`` on the device, keeping tied parameters
    tied; returns old parameter id -> new parameter (an optimiser's groups follow it)."""
    moved: dict[int, torch.nn.Parameter] = {}
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None or isinstance(p, OnDevice):
                continue
            if id(p) not in moved:
                moved[id(p)] = torch.nn.Parameter(OnDevice(p.detach()), p.requires_grad)
            sub._parameters[name] = moved[id(p)]
        for name, b in list(sub._buffers.items()):
            if b is not None and not isinstance(b, OnDevice):
                sub._buffers[name] = OnDevice(b)
    return moved


def move_engine(engine: Any) -> Any:
    """A DeepSpeed engine (ZeRO 0, the one that keeps plain parameters) as if DeepSpeed had
    put it on a GPU: the module on the device, its optimiser holding the moved parameters."""
    moved = move_module(engine.module)
    if engine.optimizer is not None:
        for group in engine.optimizer.param_groups:
            group["params"] = [moved[id(p)] for p in group["params"]]
    return engine
