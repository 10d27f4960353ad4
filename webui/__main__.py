"""`python -m webui txt2img ...`: see webui/cli.py."""

from webui.cli import main

raise SystemExit(main())
