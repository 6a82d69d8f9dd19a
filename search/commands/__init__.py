"""CLI subcommands: each module here defines ``register(subparsers)``; cli.py finds them all.

Commands are thin: parse, one call into ``tuning``/``monitor``/``analysis``, print. They import those packages
inside their functions, so ``lic-search --help`` and ``validate`` do not pay for Ray, MLflow and torch at start.
"""
