"""The committee's shared neighbour graph: ``prepare_graph`` of one frozen model (the index
graph and the geometric factors), evaluated by another with ``forward_prepared``, gives exactly
that model's own ``forward_lower``, with its own normalisation and in any order of the models;
the geometric factors are computed once; graphs of another spec (cutoffs, ``sel``, smoothing
radii, precision) or exchange path are refused with a clear error.
"""

from __future__ import annotations

import pytest
import torch
from conftest import alloy_frame, make_model
from exchange_reference import self_swap_comm_dict

# what a TorchScript method raises for a RuntimeError of the scripted code
JIT_ERRORS = (RuntimeError, torch.jit.Error)
KEYS = ("energy", "atom_energy", "extended_force", "virial")


def _model(seed, **repflow):
    """A test model; its environment normalisation (``stddev``, per model, not shared) set
    from the seed, so that two models differ in it too."""
    model = make_model(seed, **repflow)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(100 + seed)
        std = model.descriptor.stddev
        std.copy_(0.5 + torch.rand(std.shape, generator=gen, dtype=std.dtype))
    return model


def _inputs(model, frame):
    from dpa3.data.neighbor import build_neighbor_batch

    coord, atype, box = frame
    # a raw list wider than rcut, in shuffled column order, as LAMMPS gives it
    nb = build_neighbor_batch(coord[None], box[None], model.get_rcut() + 1.0, 200)
    gen = torch.Generator().manual_seed(0)
    nlist = nb.nlist[:, :, torch.randperm(nb.nlist.shape[2], generator=gen)]
    ext_atype = torch.tensor(atype)[nb.mapping]
    return nb.ext_coord, ext_atype, nlist, nb.mapping, len(atype)


@pytest.fixture(autouse=True)
def plain_executor():
    """Run the scripted methods as the LAMMPS plugin does (graph executor optimisation off):
    with it on, a method's third call runs an optimised plan whose fused kernels round
    differently, and the comparisons below call the methods more often than that."""
    before = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    yield
    torch._C._set_graph_executor_optimize(before)


@pytest.fixture(scope="module")
def frozen_models(tmp_path_factory):
    from dpa3.export.freeze import freeze, load_frozen

    d = tmp_path_factory.mktemp("shared_graph")
    out = {}
    for name, seed, repflow in [
        ("a", 0, {}),
        ("b", 1, {}),
        ("asel", 1, {"a_sel": 20}),
        ("smth", 1, {"e_rcut_smth": 3.0}),
        ("asmth", 1, {"a_rcut_smth": 2.5}),
    ]:
        out[name], _ = load_frozen(freeze(_model(seed, **repflow), d / f"{name}.pth"))
    return out


def test_other_models_graph_gives_own_result(frozen_models):
    a, b = frozen_models["a"], frozen_models["b"]
    assert a.get_graph_spec() == b.get_graph_spec()
    ext, ext_t, nlist, mapping, nloc = _inputs(a, alloy_frame())
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
    for path_mapping, path_comm in [(mapping, None), (None, comm)]:
        graph = a.prepare_graph(ext, nlist, path_mapping, path_comm)
        assert graph["coord"].requires_grad and graph["angle_cos"].requires_grad
        own_a = a.forward_lower(ext, ext_t, nlist, path_mapping, True, path_comm)
        own_b = b.forward_lower(ext, ext_t, nlist, path_mapping, True, path_comm)
        # b first on a's graph, then a, b again (with the atomic virial), a again: each
        # model back-propagates through the same geometric factors
        got_b = b.forward_prepared(ext, ext_t, graph, False, path_comm)
        got_a = a.forward_prepared(ext, ext_t, graph, False, path_comm)
        got_b_av = b.forward_prepared(ext, ext_t, graph, True, path_comm)
        got_a2 = a.forward_prepared(ext, ext_t, graph, False, path_comm)
        # the two models differ, so evaluating the wrong weights would show
        assert (own_a["energy"] - own_b["energy"]).abs().item() > 1e-3
        assert (own_a["extended_force"] - own_b["extended_force"]).abs().max().item() > 1e-3
        for k in KEYS:
            assert torch.equal(got_b[k], own_b[k]), k
            assert torch.equal(got_a[k], own_a[k]), k
            assert torch.equal(got_a2[k], own_a[k]), k
            assert torch.equal(got_b_av[k], own_b[k]), k
        assert torch.equal(got_b_av["extended_virial"], own_b["extended_virial"])


@pytest.mark.parametrize("other", ["asel", "smth", "asmth"])
def test_graph_of_another_spec_is_refused(frozen_models, other):
    a, b = frozen_models["a"], frozen_models[other]
    assert a.get_graph_spec() != b.get_graph_spec()
    ext, ext_t, nlist, mapping, _ = _inputs(a, alloy_frame())
    graph = a.prepare_graph(ext, nlist, mapping, None)
    with pytest.raises(JIT_ERRORS, match="graph prepared for"):
        b.forward_prepared(ext, ext_t, graph, False, None)


def test_geometric_factors_are_computed_once(monkeypatch):
    """Eager models: one ``DescrptDPA3.geometry`` per graph, whatever the number of models
    evaluating it, and each model's result is its own ``forward_lower``'s."""
    from dpa3.model.descriptor import DescrptDPA3

    a, b = _model(0), _model(1)
    ext, ext_t, nlist, mapping, _ = _inputs(a, alloy_frame())
    own = [m.forward_lower(ext, ext_t, nlist, mapping, False, None) for m in (a, b)]
    calls = []
    original = DescrptDPA3.geometry

    def spy(self, coord, graph):
        calls.append(coord.shape)
        return original(self, coord, graph)

    monkeypatch.setattr(DescrptDPA3, "geometry", spy)
    graph = a.prepare_graph(ext, nlist, mapping, None)
    got = [m.forward_prepared(ext, ext_t, graph, False, None) for m in (a, b, a)]
    assert len(calls) == 1
    for g, ref in zip(got, [own[0], own[1], own[0]], strict=True):
        for k in KEYS:
            assert torch.equal(g[k], ref[k]), k


def test_low_memory_model_on_a_shared_graph():
    """A model that recomputes its layers (graph over the budget) keeps the shared geometric
    factors for the next model: both give their own results."""
    a, b = _model(0), _model(1)
    b.graph_budget_bytes = 0
    ext, ext_t, nlist, mapping, _ = _inputs(a, alloy_frame())
    own_a = a.forward_lower(ext, ext_t, nlist, mapping, False, None)
    own_b = b.forward_lower(ext, ext_t, nlist, mapping, False, None)
    graph = a.prepare_graph(ext, nlist, mapping, None)
    got_b = b.forward_prepared(ext, ext_t, graph, False, None)
    got_a = a.forward_prepared(ext, ext_t, graph, False, None)
    for k in KEYS:
        assert torch.equal(got_b[k], own_b[k]), k
        assert torch.equal(got_a[k], own_a[k]), k


def test_graph_of_another_exchange_path_is_refused(frozen_models):
    a = frozen_models["a"]
    ext, ext_t, nlist, mapping, nloc = _inputs(a, alloy_frame())
    graph = a.prepare_graph(ext, nlist, mapping, None)
    comm = self_swap_comm_dict(mapping, nloc, n_swaps=4)
    with pytest.raises(JIT_ERRORS, match="exchange path"):
        a.forward_prepared(ext, ext_t, graph, False, comm)
