"""`python -m facestudio` is the same as the `facestudio` command."""

from facestudio.cli.main import main

raise SystemExit(main())
