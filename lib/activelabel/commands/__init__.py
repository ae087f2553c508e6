"""The ``activelabel`` subcommands, one module each; :mod:`activelabel.cli` dispatches to them."""
