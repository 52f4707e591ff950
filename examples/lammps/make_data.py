"""Write the LAMMPS data files of this folder from the bundled training data.

    python make_data.py

data.water: frame 0 of ../data/water/data_0 (64 H2O, cubic box), types 1 = O, 2 = H.
data.alloy: frame 0 of ../data/alloy-emt-CuAlNi/natoms_72 (fcc Cu-Al-Ni, strained, general
triclinic cell), types 1 = Cu, 2 = Al, 3 = Ni, rotated into LAMMPS's restricted triclinic
form (a along x, b in the xy plane) with the atoms wrapped into the cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
MASSES = {"O": 15.999, "H": 1.008, "Cu": 63.546, "Al": 26.982, "Ni": 58.693}


def load(system: Path, frame: int = 0):
    type_map = (system / "type_map.raw").read_text().split()
    sets = system / "set.000"
    coord = np.load(sets / "coord.npy")[frame].reshape(-1, 3)
    box = np.load(sets / "box.npy")[frame].reshape(3, 3)
    if (sets / "real_atom_types.npy").exists():
        types = np.load(sets / "real_atom_types.npy")[frame].astype(int)
    else:
        types = np.loadtxt(system / "type.raw", dtype=int).reshape(-1)
    return coord, types, box, type_map


def restricted_triclinic(coord: np.ndarray, cell: np.ndarray):
    """Same fractional coordinates (wrapped into [0, 1)) in a cell with rows
    (ax,0,0), (bx,by,0), (cx,cy,cz)."""
    a, b, c = cell
    ax = np.linalg.norm(a)
    ahat = a / ax
    bx = b @ ahat
    by = np.linalg.norm(np.cross(ahat, b))
    cx = c @ ahat
    cy = (b @ c - bx * cx) / by
    cz = np.sqrt(c @ c - cx * cx - cy * cy)
    new = np.array([[ax, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])
    frac = np.mod(coord @ np.linalg.inv(cell), 1.0)
    frac[frac >= 1.0] -= 1.0
    return frac @ new, new


def write(path: Path, title: str, coord, types, cell, elements) -> None:
    lines = [title, "", f"{len(coord)} atoms", f"{len(elements)} atom types", ""]
    lines += [
        f"0.0 {cell[0, 0]:.10f} xlo xhi",
        f"0.0 {cell[1, 1]:.10f} ylo yhi",
        f"0.0 {cell[2, 2]:.10f} zlo zhi",
    ]
    if np.any(cell[[1, 2, 2], [0, 0, 1]] != 0.0):
        lines.append(f"{cell[1, 0]:.10f} {cell[2, 0]:.10f} {cell[2, 1]:.10f} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{i + 1} {MASSES[el]}  # {el}" for i, el in enumerate(elements)]
    lines += ["", "Atoms  # atomic", ""]
    for i, (t, x) in enumerate(zip(types, coord, strict=True)):
        lines.append(f"{i + 1} {t} {x[0]:.10f} {x[1]:.10f} {x[2]:.10f}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    for name, system, elements, title in [
        ("data.water", DATA / "water" / "data_0", ["O", "H"], "64 H2O, liquid water (DFT data)"),
        (
            "data.alloy",
            DATA / "alloy-emt-CuAlNi" / "natoms_72",
            ["Cu", "Al", "Ni"],
            "Cu-Al-Ni fcc alloy, 72 atoms, triclinic",
        ),
    ]:
        coord, types, box, type_map = load(system)
        coord, cell = restricted_triclinic(coord, box)
        lmp_types = [elements.index(type_map[t]) + 1 for t in types]
        write(HERE / name, title, coord, lmp_types, cell, elements)


if __name__ == "__main__":
    main()
