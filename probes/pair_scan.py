"""Pair scan: the gradient of the loss for every (input, target class) pair, batched.

The question's ``get_weight_grad`` ran one forward+backward per pair. Here:

* **flags** (which pairs have an all-zero gradient) come from one forward pass. A pair's
  parameter gradient is ``J^T g`` with ``g`` the loss gradient at the model output, so
  ``g == 0`` makes every parameter gradient zero; and when the output is produced directly
  by a Linear layer with a bias, that bias's gradient *is* ``g``, so ``g != 0`` makes the
  gradient non-zero. The flags are then exact from ``g`` alone. Where that does not hold
  (no output bias) we fall back to full per-pair gradients.
* **norms** (each pair's gradient norm per layer) come from one forward pass over a chunk
  of inputs and one backward pass per target, which gives every layer's output gradient
  per example; the per-example parameter-gradient norms follow from those and the layer
  inputs without forming most per-pair gradients (``|a| |g|`` for a Linear layer, sums
  over positions for BatchNorm; a Conv2d's per-example gradient is one batched matmul,
  formed per chunk). Models with other parametrised layers use ``torch.func`` instead:
  ``vjp`` vmapped over the targets' output gradients, one input at a time, in chunks
  sized to a memory budget.

The model is run in inference mode (BatchNorm running statistics, no dropout), as Keras'
``get_weight_grad`` did, with other probes suspended; its training flags are restored.
In inference mode examples are independent, which is what makes per-example gradients
from one batched pass exact.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import expect_module, first_tensor, leaf_modules, suspended

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of per-pair gradients alive at once
# bytes of one layer output per chunk of the flags' forward pass: cache-sized on a CPU
FORWARD_CHUNK_BYTES = {"cpu": 16 * 2**20, "other": 1024 * 2**20}


@dataclass
class PairScanResult:
    """Per (input i, target c): ``all_zero[i, c]``, ``logits[i]`` and optional layer norms."""

    logits: torch.Tensor  # (N, C)
    output_grad: torch.Tensor  # (N, C, C): d loss(i, c) / d logits(i)
    all_zero: torch.Tensor  # (N, C) bool
    flags_from_output_grad: bool  # True: flags by the exact shortcut; False: full gradients
    layer_norms: Dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (N', C)
    norms_method: str = ""  # how full gradients were taken: "closed-form", "torch.func" or "" (none)

    @property
    def pairs(self) -> int:
        return self.all_zero.numel()


@contextlib.contextmanager
def inference_mode_of(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def output_gradients(logits: torch.Tensor, loss_fn: LossFn, num_targets: int) -> torch.Tensor:
    """d loss(logits_i, onehot(c)) / d logits_i for every i and c: shape (N, C, K)."""
    n, k = logits.shape
    z = logits.detach().unsqueeze(1).expand(n, num_targets, k).reshape(n * num_targets, k).clone()
    z.requires_grad_(True)
    onehot = torch.eye(num_targets, k, dtype=z.dtype, device=z.device).repeat(n, 1)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(z, onehot).sum(), z)
    return g.reshape(n, num_targets, k)


def _forward_with_output_layer(model: nn.Module, x: torch.Tensor):
    """Run the model in chunks and find which leaf module produced its output, if any.

    The chunk keeps each layer's output near ``FORWARD_CHUNK_BYTES``: on a CPU, a forward
    pass over 1,000 images at once runs at half the speed of one in chunks of ~100, its
    multi-megabyte activations falling out of cache and costing page faults.
    """
    last: Dict[str, object] = {}
    largest = [1]

    def remember(module, inputs, output):
        last["module"], last["output"] = module, output
        out = first_tensor(output)
        if out is not None:
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(remember) for _, m in leaf_modules(model)]
    try:
        first = model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"pair_scan needs the model's logits as a tensor, but {type(model).__name__} returned a "
                        f"{type(first).__name__}; pass output_fn to pick them, e.g. output_fn=lambda out: out[0] "
                        "for (logits, loss) or output_fn=lambda out: out['logits'] for a dict")
    producer = last.get("module") if last.get("output") is first else None
    if x.shape[0] <= 1:
        return first, producer
    target = FORWARD_CHUNK_BYTES.get(x.device.type, FORWARD_CHUNK_BYTES["other"])
    chunk = max(1, target // largest[0])
    return torch.cat([first] + [model(x[i:i + chunk]) for i in range(1, x.shape[0], chunk)]), producer


def _has_exact_shortcut(producer: Optional[nn.Module]) -> bool:
    return isinstance(producer, nn.Linear) and producer.bias is not None and producer.bias.requires_grad


def _layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


@contextlib.contextmanager
def _module_tensors_kept(model: nn.Module) -> Iterator[None]:
    """Put every module's own parameters and buffers back afterwards.

    ``torch.func.functional_call`` leaves plain tensors in place of the parameters of a
    module that appears twice in the model (seen with torch 2.13): the model would then
    hold tensors its optimizer does not know, and that block would silently stop training.
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for module, params, buffers in saved:
            module._parameters.update(params)
            module._buffers.update(buffers)


def per_pair_layer_norms(model: nn.Module, x: torch.Tensor, output_grad: torch.Tensor,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Per pair and layer: gradient L2 norm and whether any element is non-zero.

    Returns ``(norms, nonzero)``: dicts layer -> (N, C) tensors. Pairs' gradients are formed
    ``chunk`` inputs at a time, with ``chunk`` chosen so that at most ``memory_budget``
    bytes of them exist at once.
    """
    from torch.func import functional_call, vjp, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    n_targets = output_grad.shape[1]
    per_pair_bytes = sum(p.numel() for p in params.values()) * 4 * n_targets
    chunk = max(1, int(memory_budget // max(per_pair_bytes, 1)))
    layers = sorted({_layer_of(n) for n in params})

    def grads_of_one(x1: torch.Tensor, cot: torch.Tensor):
        def f(p):
            return functional_call(model, (p, buffers), (x1.unsqueeze(0),)).squeeze(0)

        _, pullback = vjp(f, params)
        (grads,) = vmap(pullback)(cot)  # name -> (C, *param.shape)
        sq = {layer: 0.0 for layer in layers}
        nz = {layer: 0 for layer in layers}
        for name, g in grads.items():
            flat = g.reshape(g.shape[0], -1)
            sq[_layer_of(name)] = sq[_layer_of(name)] + (flat.double() ** 2).sum(1)
            nz[_layer_of(name)] = nz[_layer_of(name)] + (flat != 0).sum(1)
        return sq, nz

    sq_parts, nz_parts = [], []
    with torch.no_grad(), _module_tensors_kept(model):
        for start in range(0, x.shape[0], chunk):
            sq, nz = vmap(grads_of_one)(x[start:start + chunk], output_grad[start:start + chunk])
            sq_parts.append(sq)
            nz_parts.append(nz)
    norms = {layer: torch.cat([s[layer] for s in sq_parts]).sqrt().float() for layer in layers}
    nonzero = {layer: torch.cat([s[layer] for s in nz_parts]) > 0 for layer in layers}
    return norms, nonzero


# -- fast per-pair norms -------------------------------------------------------------------
# A layer's per-example parameter gradients follow from its input a and the gradient g at
# its output: Linear dW = g a^T, db = g; Conv2d dW = G unfold(a)^T, db = sum over positions
# of G; BatchNorm in inference mode dgamma = sum g * xhat, dbeta = sum g. One forward over
# a chunk of inputs gives every a, one backward per target gives every g.

_Layer = Tuple[str, nn.Module, str]  # (name, module, kind)


def _kind(module: nn.Module) -> Optional[str]:
    """Which closed form gives this layer's per-example gradient, if any."""
    if isinstance(module, nn.Linear):
        return "linear"
    if (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and module.padding != "same"):
        return "conv2d"
    if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
            and module.running_mean is not None and module.running_var is not None):
        return "batchnorm"  # in eval mode with running statistics: an affine map per channel
    return None


def _fast_layers(model: nn.Module) -> Optional[List[_Layer]]:
    """The layers that own trainable parameters, or None when one has no closed form here."""
    layers = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        kind = _kind(module)
        if kind is None or not name:
            return None
        layers.append((name, module, kind))
    return layers


def _trainable(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]


class _Capture:
    """Forward hooks keeping each layer's input and output of one forward pass.

    With ``clone`` the model continues with a copy of each output, so that an in-place op
    after a layer (``ReLU(inplace=True)``) leaves the kept output, and its gradient, alone.
    """

    def __init__(self, modules: List[Tuple[str, nn.Module]], clone: bool = False) -> None:
        self.seen: Dict[str, tuple] = {}
        self.twice = False
        self.clone = clone
        self.handles = [m.register_forward_hook(partial(self._hook, name)) for name, m in modules]

    def _hook(self, name: str, module: nn.Module, inputs: tuple, output: object):
        self.twice |= name in self.seen  # a layer used twice: its per-example sums do not split
        first = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        self.seen[name] = (first, output, output._version if torch.is_tensor(output) else None)
        return output.clone() if self.clone and torch.is_tensor(output) else None

    def modified_in_place(self) -> bool:
        return any(torch.is_tensor(o) and o._version != v for _, o, v in self.seen.values())

    def intact(self, count: int) -> bool:
        """Each layer ran once on a tensor, and no output was modified in place afterwards."""
        return (not self.twice and len(self.seen) == count and not self.modified_in_place()
                and all(torch.is_tensor(o) and a is not None for a, o, _ in self.seen.values()))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _prepare(module: nn.Module, kind: str, a: torch.Tensor) -> Dict[str, torch.Tensor]:
    """What a layer's per-example gradients need from its input, shared by all targets."""
    a = a.detach()
    if kind == "linear":
        if a.dim() == 2:
            return {"a": a, "a_sq": a.double().square().sum(1), "a_max": a.abs().amax(1)}
        return {"a": a.reshape(a.shape[0], -1, a.shape[-1])}  # (B, T, in)
    if kind == "conv2d":
        padding = 0 if module.padding == "valid" else module.padding
        u = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return {"ut": u.transpose(1, 2).contiguous()}  # (B, L, Cin*kh*kw)
    shape = [1, -1] + [1] * (a.dim() - 2)
    return {"xhat": (a - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)}


def _per_example(module: nn.Module, kind: str, prep: Dict[str, torch.Tensor], g: torch.Tensor, want_sums: bool):
    """For one target: each example's squared gradient norm (float64), whether any element
    is non-zero, and with ``want_sums`` the gradients summed over examples (for the check)."""
    b = g.shape[0]
    on = dict(_trainable(module))
    sq = torch.zeros(b, dtype=torch.float64, device=g.device)
    nz = torch.zeros(b, dtype=torch.bool, device=g.device)
    sums: Dict[str, torch.Tensor] = {}
    if kind == "linear" and "a_sq" in prep:  # never forms g a^T: |g a^T| = |g| |a|
        g_sq = g.double().square().sum(1)
        if "weight" in on:
            sq += prep["a_sq"] * g_sq
            nz |= (g.abs().amax(1) * prep["a_max"]) != 0  # g a^T underflows to 0 iff this does
            if want_sums:
                sums["weight"] = g.t() @ prep["a"]
        if "bias" in on:
            sq += g_sq
            nz |= (g != 0).any(1)
            if want_sums:
                sums["bias"] = g.sum(0)
        return sq, nz, sums
    if kind == "linear":
        g3 = g.reshape(b, -1, g.shape[-1])  # (B, T, out)
        grads = {"weight": lambda: torch.bmm(g3.transpose(1, 2), prep["a"]), "bias": lambda: g3.sum(1)}
    elif kind == "conv2d":
        g3 = g.reshape(b, g.shape[1], -1)  # (B, Cout, L)
        grads = {"weight": lambda: torch.bmm(g3, prep["ut"]), "bias": lambda: g3.sum(2)}  # (B, Cout, Cin*kh*kw)
    else:
        dims = list(range(2, g.dim()))
        grads = {"weight": lambda: (g * prep["xhat"]).sum(dims) if dims else g * prep["xhat"],
                 "bias": lambda: g.sum(dims) if dims else g}
    for pname in on:
        grad = grads[pname]().reshape(b, -1)
        sq += grad.double().square().sum(1)
        nz |= (grad != 0).any(1)
        if want_sums:
            sums[pname] = grad.sum(0)
    return sq, nz, sums


def _sums_match(sums: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> bool:
    for pname, total in sums.items():
        ref = reference[pname].reshape(-1)
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        if not torch.allclose(total.reshape(-1).to(ref.dtype), ref, rtol=1e-3, atol=1e-4 * scale + 1e-30):
            return False
    return True


def _bytes_per_input(model: nn.Module, layers: List[_Layer], x1: torch.Tensor) -> int:
    """Rough memory one input costs the fast path: each layer output kept for the backward
    pass and its gradient, and every convolution's unfolded input and per-example gradient."""
    everything = _Capture(list(leaf_modules(model)))
    try:
        with torch.no_grad():
            model(x1)
    finally:
        everything.remove()
    elements = 2 * sum(o.numel() for _, o, _ in everything.seen.values() if torch.is_tensor(o))
    for name, module, kind in layers:
        if kind == "conv2d" and name in everything.seen:
            positions = everything.seen[name][1][0, 0].numel()
            elements += (2 * positions + module.out_channels) * module.weight[0].numel()
    return max(1, elements * x1.element_size())


def fast_layer_norms(model: nn.Module, x: torch.Tensor, output_grad: torch.Tensor,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Per pair and layer: gradient L2 norm and whether any element is non-zero, from one
    forward per chunk of inputs and one backward per target.

    Returns ``(norms, nonzero)`` as :func:`per_pair_layer_norms` does, or None when the model
    has a trainable layer without a closed form here (Linear, Conv2d, BatchNorm with running
    statistics), so that the caller uses ``torch.func``. The first chunk checks itself: its
    per-example gradients summed over examples must equal autograd's gradient of the sum,
    which catches parameters used outside their module, subclasses that change ``forward``
    and outputs changed in place.
    """
    layers = _fast_layers(model)
    if not layers or x.shape[0] == 0:
        return None
    n, n_targets = x.shape[0], output_grad.shape[1]
    chunk = max(1, int(memory_budget // _bytes_per_input(model, layers, x[:1])))
    sq = {name: torch.zeros(n, n_targets, dtype=torch.float64, device=x.device) for name, _, _ in layers}
    nz = {name: torch.zeros(n, n_targets, dtype=torch.bool, device=x.device) for name, _, _ in layers}
    clone = False
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        for _ in range(2):
            cap = _Capture([(name, m) for name, m, _ in layers], clone)
            try:
                with torch.enable_grad():
                    logits = model(x[start:stop])
            finally:
                cap.remove()
            if clone or not cap.modified_in_place():
                break
            clone = True  # run the chunk again, keeping the outputs away from in-place ops
        if not cap.intact(len(layers)):
            return None
        outs = [cap.seen[name][1] for name, _, _ in layers]
        preps = [_prepare(m, kind, cap.seen[name][0]) for name, m, kind in layers]
        cap = None  # the graph keeps what backward needs; drop our references to the rest
        for c in range(n_targets):
            check = start == 0 and c == 0
            params = [p for _, m, _ in layers for _, p in _trainable(m)] if check else []
            grads = torch.autograd.grad(logits, outs + params, grad_outputs=output_grad[start:stop, c],
                                        retain_graph=c < n_targets - 1, allow_unused=True)
            reference = iter(grads[len(outs):])
            for (name, module, kind), prep, g in zip(layers, preps, grads):
                if g is None:  # the layer does not reach the output
                    return None
                s, z, sums = _per_example(module, kind, prep, g.detach(), check)
                sq[name][start:stop, c] = s
                nz[name][start:stop, c] = z
                if check:
                    batch = {pname: next(reference) for pname, _ in _trainable(module)}
                    if any(v is None for v in batch.values()) or not _sums_match(sums, batch):
                        return None
        del logits, outs, preps
    return {name: v.sqrt().float() for name, v in sq.items()}, nz


class _Selected(nn.Module):
    """The model with ``output_fn`` applied to its output (its logits picked from a tuple or dict)."""

    def __init__(self, model: nn.Module, output_fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.output_fn = model, output_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_fn(self.inner(x))


def pair_scan(model: nn.Module, x: torch.Tensor, loss_fn: LossFn, num_targets: Optional[int] = None,
              norms_for: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET,
              output_fn: Optional[Callable[[Any], torch.Tensor]] = None) -> PairScanResult:
    """Scan every (input, target) pair of ``x`` for all-zero gradients.

    Args:
        output_fn: for a model that does not return its logits as a tensor, picks them from
            what it returns, e.g. ``lambda out: out[0]`` for ``(logits, loss)`` or
            ``lambda out: out["logits"]`` for a dict.
        loss_fn: per-example loss ``loss_fn(logits, onehot_targets) -> (N,)``.
        num_targets: number of target classes (default: the model's output width).
        norms_for: also compute per-layer gradient norms for the first ``norms_for`` inputs.
        memory_budget: roughly how many bytes the per-pair gradient work may hold at once.
    """
    expect_module(model)
    if output_fn is not None:
        result = pair_scan(_Selected(model, output_fn), x, loss_fn, num_targets, norms_for, memory_budget)
        result.layer_norms = {name.removeprefix("inner."): v for name, v in result.layer_norms.items()}
        return result
    with suspended(), inference_mode_of(model), torch.no_grad():
        logits, producer = _forward_with_output_layer(model, x)
    if logits.dim() != 2:
        raise ValueError(f"pair_scan needs (N, classes) outputs, got shape {tuple(logits.shape)}")
    n_targets = num_targets or logits.shape[1]
    g = output_gradients(logits, loss_fn, n_targets)
    exact = _has_exact_shortcut(producer)
    result = PairScanResult(logits.detach(), g, (g == 0).all(-1), exact)
    need_full = x.shape[0] if not exact else min(norms_for, x.shape[0])
    if need_full:
        with suspended(), inference_mode_of(model):
            fast = fast_layer_norms(model, x[:need_full], g[:need_full], memory_budget)
            norms, nonzero = fast or per_pair_layer_norms(model, x[:need_full], g[:need_full], memory_budget)
        result.layer_norms = norms
        result.norms_method = "closed-form" if fast else "torch.func"
        if not exact:
            any_nonzero = torch.stack(list(nonzero.values())).any(0)
            result.all_zero = ~any_nonzero
    return result
