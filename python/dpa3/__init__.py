"""dpa3: the DPA3 interatomic potential (training, export, ASE, LAMMPS).

Public API only; nothing here touches devices or threads at import time.
"""

__version__ = "0.1.0"
