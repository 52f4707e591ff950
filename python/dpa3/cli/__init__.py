"""Command line interface: ``dpa3 <subcommand>`` (one module per subcommand)."""
