"""The catalogue of ways a port departs from darknet's [yolo] training pass, as executable semantics.

``variant`` (the switches, standard library only), ``catalogue`` (each
deviation: family, what a port does, what darknet does, the fix) and
``variant_forward`` (the PyTorch port run with a ``Variant``). Import the
submodules directly: this package imports nothing, so the port can read
``parity.deviations.variant`` without a cycle.
"""
