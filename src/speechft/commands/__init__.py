"""CLI subcommands: option parsing only; each calls one library function."""
