"""``dpa3 plot`` (learning curves) and ``dpa3 test --plot`` (parity plots)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib  # noqa: F401  (a test dependency installed by scripts/setup.sh)
import numpy as np
import pytest

from dpa3.cli.main import main
from dpa3.plot import (
    PlotError,
    lcurve_figure,
    parity_figure,
    plot_lcurves,
    read_lcurve,
)

ROOT = Path(__file__).resolve().parents[2]
MOLECULE = str(ROOT / "examples" / "data" / "molecules-nopbc" / "C1H4O2")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# the header and the row format of dpa3.train.trainer, with validation and a virial term
OURS_HEADER = (
    "# step       rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn"
    "    rmse_v_val  rmse_v_trn         lr\n"
    "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"
)


def _write_ours(path: Path, nsteps: int = 30, virial: bool = True) -> Path:
    rows = []
    for i in range(nsteps):
        step = 1 if i == 0 else 10 * i
        decay = (i + 1) ** -0.5
        v = f"{0.3 * decay:11.2e} {0.25 * decay:11.2e}" if virial else f"{'nan':>11} {'nan':>11}"
        rows.append(
            f"{step:7d}   {20 * decay:11.2e} {18 * decay:11.2e}   {0.5 * decay:11.2e} "
            f"{0.4 * decay:11.2e}   {0.9 * decay:11.2e} {0.8 * decay:11.2e}   {v}   "
            f"{2e-3 * 0.9**i:8.1e}\n"
        )
    path.write_text(OURS_HEADER + "".join(rows))
    return path


def _write_deepmd(path: Path) -> Path:
    """DeePMD-kit's layout without validation data (two spaces after '#')."""
    lines = ["#  step      rmse_trn    rmse_e_trn    rmse_f_trn         lr\n"]
    for i in range(20):
        lines.append(
            f"{i * 100:7d}      {9.0 / (i + 1):.2e}    {0.1 / (i + 1):.2e}      "
            f"{0.5 / (i + 1):.2e}    {1e-3 * 0.8**i:.1e}\n"
        )
    path.write_text("".join(lines))
    return path


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_read_lcurve_columns(tmp_path):
    c = read_lcurve(_write_ours(tmp_path / "lcurve.out", nsteps=5))
    assert c.columns[0] == "step" and c.columns[-1] == "lr" and c.data.shape == (5, 10)
    assert c.metrics() == {
        "rmse": {"val": "rmse_val", "trn": "rmse_trn"},
        "rmse_e": {"val": "rmse_e_val", "trn": "rmse_e_trn"},
        "rmse_f": {"val": "rmse_f_val", "trn": "rmse_f_trn"},
        "rmse_v": {"val": "rmse_v_val", "trn": "rmse_v_trn"},
    }
    np.testing.assert_array_equal(c.step, [1, 10, 20, 30, 40])
    assert c.column("rmse_e_trn")[0] == pytest.approx(0.4)


def test_plot_writes_png(tmp_path):
    out = plot_lcurves([_write_ours(tmp_path / "lcurve.out")], tmp_path / "sub" / "lc.png")
    _assert_png(out)
    fig = lcurve_figure([tmp_path / "lcurve.out"])
    titles = _titles(fig)
    assert titles[:4] == [
        "loss",
        "energy RMSE (eV/atom)",
        "force RMSE (eV/Å)",
        "virial RMSE (eV/atom)",
    ]
    assert titles[-1] == "learning rate"
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "log"
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_ydata()[0], 18.0)


def test_plot_nan_virial_has_no_virial_panel(tmp_path):
    path = _write_ours(tmp_path / "lcurve.out", virial=False)
    assert np.isnan(read_lcurve(path).column("rmse_v_trn")).all()
    titles = _titles(lcurve_figure([path]))
    assert not any("virial" in t for t in titles)
    assert len(titles) == 4  # loss, energy, force, lr
    _assert_png(plot_lcurves([path], tmp_path / "lc.png"))


def test_plot_deepmd_and_several_files_cli(tmp_path, capsys):
    ours = _write_ours(tmp_path / "ours.out")
    dp = _write_deepmd(tmp_path / "dp.out")
    c = read_lcurve(dp)
    assert set(c.metrics()) == {"rmse", "rmse_e", "rmse_f"} and c.lr_columns() == ["lr"]
    fig = lcurve_figure([ours, dp])
    labels = [ln.get_label() for ln in fig.axes[1].get_lines()]
    assert labels == ["ours.out: train", "ours.out: validation", "dp.out: train"]
    out = tmp_path / "both.png"
    assert main(["plot", str(ours), str(dp), "-o", str(out)]) == 0
    _assert_png(out)
    assert "wrote" in capsys.readouterr().out


def test_plot_old_deepmd_and_multitask_columns(tmp_path):
    old = tmp_path / "old.out"
    old.write_text(
        "# batch      l2_tst    l2_trn    l2_e_tst  l2_e_trn         lr\n"
        "      0    1.0e+00   2.0e+00   3.0e-01   4.0e-01    1.0e-03\n"
    )
    assert read_lcurve(old).metrics() == {
        "l2": {"val": "l2_tst", "trn": "l2_trn"},
        "l2_e": {"val": "l2_e_tst", "trn": "l2_e_trn"},
    }
    mt = tmp_path / "mt.out"
    mt.write_text(
        "#  step  rmse_e_trn_water  rmse_f_trn_water  lr_water\n"
        "      1    1.0e-01   2.0e-01  1.0e-03\n      2    0.9e-01   1.9e-01  1.0e-03\n"
    )
    titles = _titles(lcurve_figure([mt]))
    assert titles == ["energy RMSE (eV/atom) [water]", "force RMSE (eV/Å) [water]", "learning rate"]


def test_plot_errors(tmp_path, capsys):
    bad = tmp_path / "bad.out"
    bad.write_text("1 2 3\n")
    with pytest.raises(PlotError, match="no header"):
        read_lcurve(bad)
    empty = tmp_path / "empty.out"
    empty.write_text(OURS_HEADER)
    with pytest.raises(PlotError, match="no data"):
        read_lcurve(empty)
    assert main(["plot", str(bad), "-o", str(tmp_path / "x.png")]) == 1
    assert main(["plot", str(tmp_path / "missing.out")]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out and "does not exist" in out
    assert not (tmp_path / "x.png").exists()


def test_truncated_last_line_is_skipped(tmp_path):
    path = _write_ours(tmp_path / "lcurve.out", nsteps=4)
    path.write_text(path.read_text() + "     40   1.0e+00  2.0")  # a killed run
    assert read_lcurve(path).data.shape == (4, 10)


def test_parity_figure_rmse_in_titles():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=300)
    pred = ref + 0.1 * rng.normal(size=300)
    rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
    fig = parity_figure(
        {
            "energy": ([pred[:10]], [ref[:10]]),
            "force": ([pred[:150], pred[150:]], [ref[:150], ref[150:]]),
            "virial": ([], []),
        }
    )
    titles = _titles(fig)
    assert len(titles) == 2  # no virial labels -> no virial panel
    assert f"RMSE {rmse:.3g} eV/Å" in titles[1] and "n=300" in titles[1]
    with pytest.raises(PlotError):
        parity_figure({"energy": ([], [])})


def test_dpa3_test_plot(tmp_path, capsys, monkeypatch):
    from test_train import tiny_input

    monkeypatch.chdir(tmp_path)
    Path("input.json").write_text(json.dumps(tiny_input(steps=2)))
    assert main(["train", "input.json"]) == 0
    capsys.readouterr()
    assert (
        main(
            ["test", "-m", "model.ckpt.pt", "-s", MOLECULE, "-n", "4", "--plot", "plots/parity.png"]
        )
        == 0
    )
    out = capsys.readouterr().out
    _assert_png(tmp_path / "plots" / "parity.png")
    assert "parity plot: plots/parity.png" in out

    # the force RMSE in the figure is the one `dpa3 test` reports
    from dpa3.data.system import load_system
    from dpa3.export.load import load_model
    from dpa3.train.evaluate import evaluate_system

    model = load_model("model.ckpt.pt")
    samples: dict = {}
    res = evaluate_system(model, load_system(MOLECULE, ["C", "H", "O"]), 4, collect=samples)
    assert sorted(samples) == ["energy", "force", "virial"]
    assert sum(a.size for a in samples["energy"][0]) == 4
    reported = float(re.search(r"Force  RMSE\s+: (\S+)", out).group(1))
    assert res.stats["f"].rmse == pytest.approx(reported, rel=1e-6)
    reported_ea = float(re.search(r"Energy RMSE/Natoms\s+: (\S+)", out).group(1))
    de = np.concatenate(samples["energy"][0]) - np.concatenate(samples["energy"][1])
    assert np.sqrt(np.mean(de**2)) == pytest.approx(reported_ea, rel=1e-6)  # per atom
    titles = _titles(parity_figure(samples))
    assert len(titles) == 2  # the molecule data have no virial labels
    assert f"RMSE {reported_ea:.3g} eV/atom" in titles[0]
    assert f"RMSE {reported:.3g} eV/Å" in titles[1]
