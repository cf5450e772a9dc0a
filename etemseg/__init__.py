"""etemseg: in-situ ETEM movies of sintering nanoparticles -> particle measurements."""

__version__ = "0.1.0"
