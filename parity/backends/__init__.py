"""The C backends: what runs darknet's [yolo] training forward pass natively.

* ``native``: compile a cffi module once per content hash into a cache and
  load it; the compiler check; sanitizer flags.
* ``ref_build``: the cffi builder of the C reference (``darknet_ref/``).
* ``ground``: the ``yref_config`` struct both C backends read, filled from a
  ``YoloConfig``.
* ``c_reference``: the C reference backend (``load_reference``,
  ``run_c_reference``).
* ``darknet_library``: a real darknet library: finding it, compiling glue
  against it, its floating-point mode, the load/call locks (public API, also
  used by ``parity.darknet_train``).
* ``libdarknet``: the real-darknet backend (``run_libdarknet``).

Each returns a ``parity.result.LayerRun``; ``parity.reference.run_reference``
dispatches between them. Importing this package imports none of them.
"""
