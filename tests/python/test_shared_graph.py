"""The committee's shared neighbour graph: ``prepare_graph`` of one frozen model, evaluated by
another with ``forward_prepared``, gives exactly that model's own ``forward_lower``; graphs of
another spec (cutoffs, ``sel``, precision) or exchange path are refused with a clear error.
"""

from __future__ import annotations

import pytest
import torch
from conftest import alloy_frame, make_model
from exchange_reference import self_swap_comm_dict

# what a TorchScript method raises for a RuntimeError of the scripted code
JIT_ERRORS = (RuntimeError, torch.jit.Error)
KEYS = ("energy", "atom_energy", "extended_force", "virial")


def _inputs(model, frame):
    from dpa3.data.neighbor import build_neighbor_batch

    coord, atype, box = frame
    # a raw list wider than rcut, in shuffled column order, as LAMMPS gives it
    nb = build_neighbor_batch(coord[None], box[None], model.get_rcut() + 1.0, 200)
    gen = torch.Generator().manual_seed(0)
    nlist = nb.nlist[:, :, torch.randperm(nb.nlist.shape[2], generator=gen)]
    ext_atype = torch.tensor(atype)[nb.mapping]
    return nb.ext_coord, ext_atype, nlist, nb.mapping, len(atype)


@pytest.fixture(scope="module")
def frozen_models(tmp_path_factory):
    from dpa3.export.freeze import freeze, load_frozen

    d = tmp_path_factory.mktemp("shared_graph")
    out = {}
    for name, seed, repflow in [("a", 0, {}), ("b", 1, {}), ("asel", 1, {"a_sel": 20})]:
        out[name], _ = load_frozen(freeze(make_model(seed, **repflow), d / f"{name}.pth"))
    return out


def test_other_models_graph_gives_own_result(frozen_models):
    a, b = frozen_models["a"], frozen_models["b"]
    assert a.get_graph_spec() == b.get_graph_spec()
    ext, ext_t, nlist, mapping, nloc = _inputs(a, alloy_frame())
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
    for path_mapping, path_comm in [(mapping, None), (None, comm)]:
        graph = a.prepare_graph(ext, nlist, path_mapping, path_comm)
        own_a = a.forward_lower(ext, ext_t, nlist, path_mapping, False, path_comm)
        own_b = b.forward_lower(ext, ext_t, nlist, path_mapping, False, path_comm)
        got_b = b.forward_prepared(ext, ext_t, graph, False, path_comm)
        got_a = a.forward_prepared(ext, ext_t, graph, False, path_comm)
        # the two models differ, so evaluating the wrong weights would show
        assert (own_a["energy"] - own_b["energy"]).abs().item() > 1e-3
        for k in KEYS:
            assert torch.equal(got_b[k], own_b[k]), k
            assert torch.equal(got_a[k], own_a[k]), k


def test_graph_of_another_spec_is_refused(frozen_models):
    a, asel = frozen_models["a"], frozen_models["asel"]
    assert a.get_graph_spec() != asel.get_graph_spec()
    ext, ext_t, nlist, mapping, _ = _inputs(a, alloy_frame())
    graph = a.prepare_graph(ext, nlist, mapping, None)
    with pytest.raises(JIT_ERRORS, match="graph prepared for"):
        asel.forward_prepared(ext, ext_t, graph, False, None)


def test_graph_of_another_exchange_path_is_refused(frozen_models):
    a = frozen_models["a"]
    ext, ext_t, nlist, mapping, nloc = _inputs(a, alloy_frame())
    graph = a.prepare_graph(ext, nlist, mapping, None)
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
    with pytest.raises(JIT_ERRORS, match="exchange path"):
        a.forward_prepared(ext, ext_t, graph, False, comm)
