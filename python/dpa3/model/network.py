"""Building blocks: activation functions, DeePMD-layout linear layers, fitting network.

Linear layers store ``matrix`` as ``[in, out]`` and compute ``y = x @ matrix + bias`` (the
DeePMD-kit layout, so weights map one to one).  Everything is TorchScript-compatible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def to_dtype(precision: str) -> torch.dtype:
    """Map ``"float32"``/``"float64"`` to a torch dtype."""
    return PRECISIONS[precision]


class Activation(nn.Module):
    """Elementwise activation chosen by name (``silut`` carries its threshold ``T``).

    ``silut(x) = silu(x)`` for ``x < T`` and ``tanh(k (x - T)) + silu(T)`` above, with
    ``k = silu'(T)`` so the function is C1 at ``T``.
    """

    def __init__(self, name: str, threshold: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.threshold = float(threshold)
        sig = 1.0 / (1.0 + math.exp(-self.threshold))
        self.slope = sig * (1.0 + self.threshold * (1.0 - sig))
        self.silu_t = self.threshold * sig

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation."""
        if self.name == "silu":
            return torch.nn.functional.silu(x)
        if self.name == "silut":
            y = torch.nn.functional.silu(x)
            # rare: skip the tanh branch (and its backward) when no entry reaches T; one
            # reduction is much cheaper than building the boolean mask first
            if x.numel() > 0 and bool(torch.amax(x.detach()) >= self.threshold):
                y = torch.where(
                    x >= self.threshold,
                    torch.tanh(self.slope * (x - self.threshold)) + self.silu_t,
                    y,
                )
            return y
        if self.name == "tanh":
            return torch.tanh(x)
        if self.name == "relu":
            return torch.relu(x)
        if self.name == "relu6":
            return torch.clamp(x, 0.0, 6.0)
        if self.name == "softplus":
            return torch.nn.functional.softplus(x)
        if self.name == "sigmoid":
            return torch.sigmoid(x)
        if self.name == "gelu":
            return torch.nn.functional.gelu(x, approximate="tanh")
        return x  # "linear"


class Linear(nn.Module):
    """``y = x @ matrix (+ bias)`` with ``matrix [in, out]``; optional ``idt [out]`` (resnet_dt).

    Initialisation follows DeePMD-kit: ``matrix ~ N(0, 1/(in+out))``, ``bias ~ N(0, 1)``,
    ``idt ~ N(0.1, 0.001^2)``.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        bias: bool = True,
        idt: bool = False,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        std = 1.0 / math.sqrt(n_in + n_out)
        self.matrix = nn.Parameter(
            torch.randn(n_in, n_out, generator=generator, dtype=torch.float64).to(dtype) * std
        )
        self.bias = (
            nn.Parameter(torch.randn(n_out, generator=generator, dtype=torch.float64).to(dtype))
            if bias
            else None
        )
        self.idt = (
            nn.Parameter(
                (0.1 + 0.001 * torch.randn(n_out, generator=generator, dtype=torch.float64)).to(
                    dtype
                )
            )
            if idt
            else None
        )

    def forward(self, x: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """Affine map (no activation, no residual); ``into`` (2-D ``x``, without a graph): the
        result is written into it and it is returned."""
        b = self.bias
        if into is not None:
            if b is None:
                return torch.mm(x, self.matrix, out=into)
            return torch.addmm(b, x, self.matrix, out=into)
        if b is not None and x.dim() == 2:  # the bias in the product: one pass less
            return torch.addmm(b, x, self.matrix)
        y = torch.matmul(x, self.matrix)
        if b is not None:
            y = y + b
        return y


class TypeEmbedding(nn.Module):
    """One-hot types times ``matrix [ntypes, n_dim]`` (+ bias), with DeePMD-kit's residual quirk.

    If ``n_dim == ntypes`` the one-hot input is added (``T = W + I``); if
    ``n_dim == 2 ntypes`` the doubled one-hot ``[I, I]`` is added.
    """

    def __init__(
        self,
        ntypes: int,
        n_dim: int,
        bias: bool,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.ntypes = ntypes
        self.n_dim = n_dim
        self.layer = Linear(ntypes, n_dim, bias=bias, dtype=dtype, generator=generator)

    def forward(self) -> torch.Tensor:
        """Return the table ``[ntypes, n_dim]``."""
        eye = torch.eye(self.ntypes, dtype=self.layer.matrix.dtype, device=self.layer.matrix.device)
        table = self.layer(eye)
        if self.n_dim == self.ntypes:
            table = table + eye
        elif self.n_dim == 2 * self.ntypes:
            table = table + torch.cat([eye, eye], dim=1)
        return table


class FittingNet(nn.Module):
    """Energy fitting network shared by all types (DPA3 is "mixed types").

    Hidden layer ``k``: ``y = act(x W + b)``; ``x <- x + idt*y`` if widths are equal,
    ``[x, x] + idt*y`` if the width doubles, else ``y``.  Output layer: ``x W + b`` (width 1).

    Input ``[..., dim_in]`` in the fitting precision, output ``[..., 1]`` same precision.
    """

    def __init__(
        self,
        dim_in: int,
        neuron: tuple[int, ...],
        activation: Activation,
        resnet_dt: bool,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        layers = []
        kinds: list[int] = []  # 0 plain, 1 identity residual, 2 doubled residual
        n_in = dim_in
        for n_out in neuron:
            kind = 1 if n_out == n_in else (2 if n_out == 2 * n_in else 0)
            layers.append(
                Linear(
                    n_in,
                    n_out,
                    bias=True,
                    idt=resnet_dt and kind > 0,
                    dtype=dtype,
                    generator=generator,
                )
            )
            kinds.append(kind)
            n_in = n_out
        self.layers = nn.ModuleList(layers)
        self.kinds = kinds
        self.out = Linear(n_in, 1, bias=True, dtype=dtype, generator=generator)
        self.activation = activation

    def atom_energies(self, d: torch.Tensor) -> torch.Tensor:
        """Atomic network energies ``[...]`` float64 (no bias) of descriptor rows ``d [...,
        dim_in]`` of any precision (evaluated in the fitting precision)."""
        return self.forward(d.to(self.out.matrix.dtype)).squeeze(-1).to(torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Atomic network energies ``[..., 1]``."""
        for k, layer in enumerate(self.layers):
            y = self.activation(layer(x))
            idt = layer.idt
            if idt is not None:
                y = y * idt
            kind = self.kinds[k]
            if kind == 1:
                x = x + y
            elif kind == 2:
                x = torch.cat([x, x], dim=-1) + y
            else:
                x = y
        return self.out(x)
