"""DeePMD-kit's ``ener`` loss (docs/dpa3-spec.md §5.1) with prefactors tied to the learning rate.

``p_X(t) = limit_pref_X + (start_pref_X - limit_pref_X) * lr(t) / start_lr``.  Per frame
``f`` with ``N_f`` atoms: energy ``(dE)^2 / N_f`` (``1/N_f^2`` with
``intensive_ener_virial``), force the mean squared component error, virial
``mean_c (dW_c)^2 / N_f`` (again ``1/N_f^2`` if intensive).  Each term is averaged over the
batch with the per-frame ``find_*`` flag, so frames without a label contribute nothing.

Options (DeePMD-kit's ``EnergyStdLoss`` meanings, checked against its numbers in
tests/python/test_loss.py): ``relative_f`` divides each atom's force error by
``|F_label| + relative_f``; ``enable_atom_ener_coeff`` compares ``sum_i c_i E_i`` (``c_i`` from
``atom_ener_coeff.npy``, default 1) with the energy label; the atomic-energy term
(``start_pref_ae``/``limit_pref_ae``) is the mean squared per-atom energy error against
``atom_ener.npy``.

After each call, :attr:`EnergyLoss.l2` holds DeePMD-kit's ``l2_*_loss`` values of that batch
(the mean squared error of each term over its labelled frames, before the ``1/N_f`` and the
prefactor; ``nan`` without labels), which ``dp`` logs to TensorBoard only.
"""

from __future__ import annotations

import math

import torch

from ..config.schedule import LossConfig
from ..data.loader import Batch


class EnergyLoss:
    """The ``ener`` loss and its RMSE metrics.

    Parameters
    ----------
    cfg
        The ``loss`` section.
    start_lr
        ``learning_rate.start_lr`` (the prefactors interpolate with ``lr / start_lr``).
    """

    def __init__(self, cfg: LossConfig, start_lr: float) -> None:
        self.cfg = cfg
        self.start_lr = start_lr
        #: ``l2_ener_loss`` (eV^2), ``l2_force_loss`` ((eV/A)^2), ``l2_virial_loss`` (eV^2),
        #: ``l2_atom_ener_loss`` (eV^2) of the last call, for the active terms
        self.l2: dict[str, float] = {}

    def prefactors(self, lr: float) -> tuple[float, float, float, float]:
        """``(p_e, p_f, p_v, p_ae)`` at learning rate ``lr`` (0 for inactive terms)."""
        c = self.cfg
        g = lr / self.start_lr

        def p(start: float, limit: float, active: bool) -> float:
            return limit + (start - limit) * g if active else 0.0

        return (
            p(c.start_pref_e, c.limit_pref_e, c.has_e),
            p(c.start_pref_f, c.limit_pref_f, c.has_f),
            p(c.start_pref_v, c.limit_pref_v, c.has_v),
            p(c.start_pref_ae, c.limit_pref_ae, c.has_ae),
        )

    def metric_names(self) -> list[str]:
        """Names of the metrics :meth:`__call__` returns, in ``lcurve.out`` order."""
        names = ["rmse"]
        if self.cfg.has_e:
            names.append("rmse_e")
        if self.cfg.has_f:
            names.append("rmse_f")
        if self.cfg.has_v:
            names.append("rmse_v")
        if self.cfg.has_ae:
            names.append("rmse_ae")
        return names

    def __call__(
        self, pred: dict[str, torch.Tensor], batch: Batch, lr: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (a scalar tensor with graph) and detached metrics (``nan`` if no label).

        ``pred`` holds ``energy`` (nf, 1), ``force`` (nf, N, 3) and ``virial`` (nf, 9), and
        ``atom_energy`` (nf, N, 1) for the atomic-energy term and ``enable_atom_ener_coeff``.
        """
        pe, pf, pv, pae = self.prefactors(lr)
        n = float(batch.natoms)
        norm = 1.0 / (n * n) if self.cfg.intensive_ener_virial else 1.0 / n
        nf = batch.nframes
        dev = batch.coord.device
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        metrics: dict[str, float] = {}
        self.l2 = {}

        def masked(err: torch.Tensor, find: torch.Tensor) -> tuple[torch.Tensor, float]:
            """Batch mean of ``find * err`` and the mean over labelled frames (for RMSE)."""
            total = (err * find).sum()
            cnt = float(find.sum())
            per_label = float(total.detach()) / cnt if cnt > 0 else math.nan
            return total / nf, per_label

        if self.cfg.has_e:
            e_pred = pred["energy"].reshape(nf)
            if self.cfg.enable_atom_ener_coeff:
                coeff = batch.atom_ener_coeff
                if coeff is None:
                    coeff = torch.ones_like(batch.atype, dtype=torch.float64)
                e_pred = (coeff * pred["atom_energy"].reshape(nf, -1)).sum(dim=1)
            de = (e_pred - batch.energy.reshape(nf)).to(torch.float64)
            term, mse = masked(de * de, batch.find_energy)
            loss = loss + pe * norm * term
            self.l2["l2_ener_loss"] = mse
            metrics["rmse_e"] = math.sqrt(mse) / n if mse == mse else math.nan
        if self.cfg.has_f:
            df = (pred["force"] - batch.force).to(torch.float64)
            if self.cfg.relative_f is not None:
                df = df / (batch.force.norm(dim=-1, keepdim=True) + self.cfg.relative_f)
            err = (df * df).reshape(nf, -1).mean(dim=1)
            term, mse = masked(err, batch.find_force)
            loss = loss + pf * term
            self.l2["l2_force_loss"] = mse
            metrics["rmse_f"] = math.sqrt(mse) if mse == mse else math.nan
        if self.cfg.has_v:
            dv = (pred["virial"].reshape(nf, 9) - batch.virial).to(torch.float64)
            err = (dv * dv).mean(dim=1)
            term, mse = masked(err, batch.find_virial)
            loss = loss + pv * norm * term
            self.l2["l2_virial_loss"] = mse
            metrics["rmse_v"] = math.sqrt(mse) / n if mse == mse else math.nan
        if self.cfg.has_ae:
            if batch.atom_ener is None:
                raise ValueError("the atomic-energy loss term needs batches with atom_ener")
            dae = (pred["atom_energy"].reshape(nf, -1) - batch.atom_ener).to(torch.float64)
            term, mse = masked((dae * dae).mean(dim=1), batch.find_atom_ener)
            loss = loss + pae * term
            self.l2["l2_atom_ener_loss"] = mse
            metrics["rmse_ae"] = math.sqrt(mse) if mse == mse else math.nan
        metrics["rmse"] = math.sqrt(max(float(loss.detach()), 0.0))
        return loss, {k: metrics[k] for k in self.metric_names()}


__all__ = ["EnergyLoss"]
