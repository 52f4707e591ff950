"""Data handling: frames, file formats and neighbour search (``dpa3.data.neighbor``)."""
