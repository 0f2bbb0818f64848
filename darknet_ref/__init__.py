"""C sources of the reference, shipped as package data (see parity/backends/native.py)."""
