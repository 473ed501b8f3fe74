"""Entry point of the bundled app: the same `facestudio` command (no arguments opens the GUI)."""

from facestudio.cli.main import main

raise SystemExit(main())
