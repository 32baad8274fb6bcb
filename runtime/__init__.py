"""myctr's runtime: everything that makes one container, synchronous plain Linux code.

Public face::

    ContainerSpec and its parts        runtime.spec
    RunRequest, build_spec             runtime.defaults
    create (clone + handshake)         runtime.create
    ContainerDir, StatePaths           runtime.containerdir, runtime.paths
    errors                             runtime.errors

``runtime`` imports neither ``supervisor`` nor ``netplug``. Modules are imported
lazily by their users: the CLI's cold start matters.
"""
