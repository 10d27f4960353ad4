"""`python -m webui txt2img ...`: see webui/cli.py; `python -m webui token ...`: see webui/token_cli.py."""

import sys

if sys.argv[1:2] == ["token"]:
    from webui.token_cli import main as token_main

    raise SystemExit(token_main(sys.argv[2:]))

from webui.cli import main  # the generation CLI loads only when asked for

raise SystemExit(main())
