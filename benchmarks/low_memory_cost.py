"""What the low-memory evaluation path costs over the standard one, and the least it could cost.

    python benchmarks/low_memory_cost.py [--reps 2 2 2] [--threads 1] [--rounds 5]

One process evaluates energy and forces of the water recipe's float32 model (6 layers, DeePMD-kit's
own checkpoint ``tests/data/parity/water_recipe_f32``, converted) on the bundled 192-atom water
frame replicated ``--reps`` times, alternating the standard path (autograd keeps every layer's
graph) and the low-memory path (``graph_budget_bytes = 0``: ``DescrptDPA3.stack_inputs`` +
``coord_grad``, docs/internals.md "Memory") for ``--rounds`` rounds after one warm-up each.

Prints, as medians over the rounds: the time per evaluation of both paths and their ratio; the
low-memory path's phases (first pass without a graph, the layers run again with a graph, the
backward pass); from one extra evaluation under ``torch.profiler``,
the ops of the layers' second forward (matrix products over edges ``[E, k] x [k, n]``,
activations, edge sums, the rest); and two floors of the ratio:

- ``floor (recomputed edge products)``: standard + the second forward's matrix products over the
  edges, i.e. what recomputing costs even if every other part of the second
  forward were free (the products are at MKL speed: merging those that share an input gains
  nothing measurable, see benchmarks/results_memory.md);
- the measured ratio itself.

The ratio is what #14's scaling clause measures at 24,576 atoms on 2 ranks (the low-memory path
there, the standard one at 1,536); the per-atom cost of the low-memory path does not depend on the
size (benchmarks/results_memory.md), so one size shows it. Same-run ratios only: this machine's
speed drifts by +-10 % within minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

PHASES = ("stack_inputs", "coord_grad")


class Phases:
    """Wall time of the low-memory path's phases (wraps methods of the model's classes)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.edges: set[int] = set()  # edge counts of the blocks (rows of the per-edge products)
        self.label = False  # put profiler labels on the layers' forward

    def wrap(self, cls: type, name: str) -> None:
        f = getattr(cls, name)

        def timed(obj, *args, **kwargs):
            t0 = time.perf_counter()
            out = f(obj, *args, **kwargs)
            self.t[name] += time.perf_counter() - t0
            return out

        setattr(cls, name, timed)

    def wrap_layer(self, cls: type, name: str) -> None:
        """Time ``cls.name`` (``forward``, or ``replay``: the second pass of a layer that kept its
        pre-activations) as the first pass (no graph) or the second forward."""
        f = getattr(cls, name)

        def forward(layer, *args, **kwargs):
            graph = torch.is_grad_enabled()
            self.edges.add(int(args[2].shape[0]))  # e [E, e_dim]
            t0 = time.perf_counter()
            if self.label:
                with torch.profiler.record_function("SECOND_FORWARD" if graph else "FIRST_PASS"):
                    out = f(layer, *args, **kwargs)
            else:
                out = f(layer, *args, **kwargs)
            self.t["second forward" if graph else "first pass layers"] += time.perf_counter() - t0
            return out

        setattr(cls, name, forward)


def second_forward_ops(prof, edges: set[int]) -> dict[str, float]:
    """Self time (s) of the ops under the SECOND_FORWARD labels, by kind."""
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        parent = ev.cpu_parent
        while parent is not None and parent.name != "SECOND_FORWARD":
            parent = parent.cpu_parent
        if parent is None or ev.name == "SECOND_FORWARD":
            continue
        t = ev.self_cpu_time_total / 1e6
        if ev.name == "aten::mm" and ev.input_shapes and ev.input_shapes[0][0] in edges:
            out["matrix products over edges"] += t
        elif ev.name == "aten::mm":
            out["matrix products over nodes"] += t
        elif "activation" in ev.name:
            out["activation"] += t
        elif "edge_sum" in ev.name:
            out["edge sums"] += t
        elif "outer" in ev.name:
            out["symmetrisation (outer sums)"] += t
        else:
            out["other"] += t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, nargs=3, default=[2, 2, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from large_system import water_recipe_case

    from dpa3.model.descriptor import DescrptDPA3
    from dpa3.model.repflow import RepFlowLayer

    model, call, natoms = water_recipe_case(tuple(args.reps), args.threads)
    ph = Phases()
    for name in PHASES:
        ph.wrap(DescrptDPA3, name)
    ph.wrap_layer(RepFlowLayer, "forward")
    ph.wrap_layer(RepFlowLayer, "replay")
    ph.wrap(RepFlowLayer, "edge_tail_grad")
    backward = torch.autograd.grad

    def grad(*a, **k):
        t0 = time.perf_counter()
        out = backward(*a, **k)
        ph.t["autograd.grad"] += time.perf_counter() - t0
        return out

    torch.autograd.grad = grad

    budgets = {"standard": 1 << 50, "low-memory": 0}
    times: dict[str, list[float]] = {k: [] for k in budgets}
    phase_runs: list[dict[str, float]] = []
    for budget in budgets.values():  # warm-up
        model.graph_budget_bytes = budget
        model.forward_extended(*call)
    for r in range(args.rounds):
        for name in budgets if r % 2 == 0 else reversed(list(budgets)):
            model.graph_budget_bytes = budgets[name]
            ph.t.clear()
            t0 = time.perf_counter()
            model.forward_extended(*call)
            times[name].append(time.perf_counter() - t0)
            if name == "low-memory":
                phase_runs.append(dict(ph.t))
    model.graph_budget_bytes = 0
    ph.label = True
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        model.forward_extended(*call)
    ops = second_forward_ops(prof, ph.edges)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    std, low = med(times["standard"]), med(times["low-memory"])
    phase = {k: med([p.get(k, 0.0) for p in phase_runs]) for k in phase_runs[0]}
    # the profiled run's split of the second forward, scaled to the timed runs' median
    total_ops = sum(ops.values())
    share = {k: v / total_ops for k, v in ops.items()}
    mm_edges = share.get("matrix products over edges", 0.0) * phase["second forward"]
    print(f"# {natoms} atoms, 1 process x {args.threads} thread(s), {args.rounds} rounds, medians")
    for name, t in (("standard", std), ("low-memory", low)):
        runs = " ".join(f"{x:.2f}" for x in times[name])
        print(f"{name:11s} {t:8.3f} s/evaluation   ({runs})")
    print(f"ratio low-memory / standard: {low / std:.3f}")
    print("low-memory phases (s):")
    names = {
        "first pass layers": "layers, first pass (no graph)",
        "second forward": "layers run again with a graph",
        "autograd.grad": "backward (autograd.grad; fitting included)",
        "edge_tail_grad": "edge updates' backward by hand (act', Lin_ea2)",
    }
    for key, label in names.items():
        print(f"  {label:45s} {phase.get(key, 0.0):7.3f}")
    print("second forward by op (profiled run, share of its op time):")
    for k, v in sorted(share.items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {100 * v:6.1f} %")
    floor = (std + mm_edges) / std
    print(f"floor (recomputed edge products over standard): {floor:.3f}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
