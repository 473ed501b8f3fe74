"""The `facestudio` command line. Each module registers one command group on the parser."""
