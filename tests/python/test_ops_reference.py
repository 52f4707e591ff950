"""The pure-PyTorch reference of the ghost exchange and the self-swap schedule helper."""

from __future__ import annotations

import pytest
import torch
from exchange_reference import (
    COMM_KEYS,
    border_exchange_reference,
    comm_args,
    reference_backward,
    reference_forward,
    self_swap_comm_dict,
)


def random_mapping(nloc: int, nghost: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ghosts = torch.randint(0, max(nloc, 1), (nghost,), generator=gen)
    return torch.cat([torch.arange(nloc), ghosts])


@pytest.mark.parametrize("chain", [True, False])
@pytest.mark.parametrize("n_swaps", [1, 3, 7])
def test_forward_is_mapping_gather(chain: bool, n_swaps: int) -> None:
    mapping = random_mapping(6, 17)
    cd = self_swap_comm_dict(mapping, 6, n_swaps=n_swaps, chain=chain)
    assert set(cd) == set(COMM_KEYS)
    g = torch.randn(23, 4, dtype=torch.float64)
    g[6:] = float("nan")  # ghost inputs are never read
    y = border_exchange_reference(g, *comm_args(cd))
    assert torch.equal(y, g[:6][mapping])


def test_chain_sends_ghost_rows() -> None:
    mapping = torch.tensor([0, 1, 0, 1, 0, 0, 1])
    cd = self_swap_comm_dict(mapping, 2, n_swaps=3, chain=True)
    # swap 0 fills rows 2, 3 (owners 0, 1); swap 1 fills rows 4, 5 (owner 0) from ghost 2;
    # swap 2 fills row 6 (owner 1) from ghost 3
    assert cd["send_idx"].tolist() == [0, 1, 2, 2, 3]
    assert cd["send_num"].tolist() == [2, 2, 1]
    assert cd["send_off"].tolist() == [0, 2, 4, 5]


def test_backward_is_index_add_with_zero_ghosts() -> None:
    mapping = random_mapping(5, 12, seed=3)
    cd = self_swap_comm_dict(mapping, 5, n_swaps=4)
    g = torch.randn(17, 3, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(17, 3, dtype=torch.float64)
    border_exchange_reference(g, *comm_args(cd)).backward(gy)
    expected = torch.zeros_like(gy)
    expected[:5] = gy[:5]
    expected.index_add_(0, mapping[5:], gy[5:])
    torch.testing.assert_close(g.grad, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(reference_backward(gy, *comm_args(cd)), expected)


def test_gradcheck_and_double_backward() -> None:
    cd = self_swap_comm_dict(random_mapping(4, 9, seed=1), 4, n_swaps=3)
    g = torch.randn(13, 2, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return border_exchange_reference(x, *comm_args(cd))

    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))


def test_zero_sizes() -> None:
    empty = self_swap_comm_dict(torch.zeros(0, dtype=torch.int64), 0, n_swaps=2)
    assert reference_forward(torch.zeros(0, 3), *comm_args(empty)).shape == (0, 3)
    none = self_swap_comm_dict(torch.arange(3), 3, n_swaps=0)
    g = torch.randn(3, 2)
    assert torch.equal(reference_forward(g, *comm_args(none)), g)


def test_rejects_non_self_swaps() -> None:
    cd = self_swap_comm_dict(torch.tensor([0, 1, 0]), 2, n_swaps=1)
    cd["send_proc"] = torch.ones(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="self swaps only"):
        reference_forward(torch.randn(3, 1), *comm_args(cd))
