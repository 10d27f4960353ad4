"""Scripts that turn one request into many generations (A1111's "Script" dropdown). Torch-free."""

from webui.scripts.args import ScriptArg
from webui.scripts.base import Script, ScriptRun
from webui.scripts.catalog import builtin_scripts, find_script, scripts_for

__all__ = ["Script", "ScriptArg", "ScriptRun", "builtin_scripts", "find_script", "scripts_for"]
