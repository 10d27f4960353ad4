"""Extensions in the page: the tabs they add, and the Extensions section of the Settings tab
(which load at the next start, each one's status and problems, its settings, install from URL)."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from webui.extensions.install import InstallError, install_from_url, install_refusal
from webui.extensions.registry import Extension, Extensions
from webui.scripts.args import ScriptArg
from webui.ui.context import PRIVATE, UiContext
from webui.ui.results import hide_error, show_error
from webui.ui.scripts_panel import script_control, slug

log = logging.getLogger(__name__)


def build_extension_tabs(extensions: Extensions) -> None:
    """Inside `gr.Tabs`: one tab per tab an extension added. One that fails to build shows the
    error in its place and is reported; the rest of the page is unaffected."""
    for extension, tab in extensions.tabs():
        with gr.Tab(tab.title, elem_id=f"tab-ext-{extension.name}-{slug(tab.title)}"):
            try:
                with gr.Column():
                    tab.build()
            except Exception as error:
                extension.report(
                    f"tab {tab.title!r} could not be built: {type(error).__name__}: {error}", error
                )
                gr.Markdown(
                    f"Extension **{extension.name}** could not build this tab: "
                    f"`{type(error).__name__}: {error}`. The rest of the app works as usual.",
                    elem_classes=["error-box"],
                )


def status_table(extensions: Extensions) -> str:
    """An HTML table of every extension folder: status, version, what it adds, latest problems."""
    if not extensions.extensions:
        return "<p>No extensions: put one folder per extension in <code>extensions/</code>.</p>"
    rows = "".join(_row(extension) for extension in extensions.extensions)
    return (
        '<table class="extensions-table" id="extensions-table"><tr><th>Extension</th><th>Version</th>'
        f"<th>Status</th><th>Adds</th><th>Problems</th></tr>{rows}</table>"
    )


def _row(extension: Extension) -> str:
    additions = extension.additions()
    adds = [f"script “{title}”" for title in additions["scripts"]]
    adds += [f"always-on “{title}”" for title in additions["alwayson_scripts"]]
    adds += [f"tab “{title}”" for title in additions["tabs"]]
    adds += ["settings"] if additions["settings"] else []
    adds += additions["routes"]
    status = extension.status + (" (built-in)" if extension.builtin else "")
    if extension.error:
        status += f": {extension.error}"
    problems = "<br>".join(html.escape(p) for p in extension.problems()[-3:]) or "–"
    return (
        f'<tr data-extension="{html.escape(extension.name)}" data-status="{extension.status}">'
        f"<td>{html.escape(extension.name)}</td><td>{html.escape(extension.version)}</td>"
        f"<td>{html.escape(status)}</td><td>{html.escape(', '.join(adds)) or '–'}</td>"
        f"<td>{problems}</td></tr>"
    )


@dataclass
class ExtensionsSettings:
    """What the page refreshes when it (re)loads, so a tab left open shows saved values."""

    outputs: list[gr.components.Component]
    current: Callable[[], list[Any]]


def build_extensions_settings(ctx: UiContext) -> ExtensionsSettings:
    """The Extensions section of the Settings tab."""
    studio, live = ctx.studio, ctx.live
    extensions = studio.extensions
    with gr.Group():
        gr.Markdown("### Extensions")
        table = gr.HTML(status_table(extensions), elem_id="extensions-status")
        refresh = gr.Button("Refresh status", size="sm", elem_id="extensions-refresh")
        names = [extension.name for extension in extensions.extensions if extension.manifest is not None]
        enabled = gr.CheckboxGroup(
            names,
            value=[name for name in names if name not in live.current.disabled_extensions],
            label="Load at the next start",
            info="Unticked extensions do not load; a change applies when the app restarts.",
            elem_id="extensions-enabled",
        )
        save_enabled = gr.Button("Save", elem_id="extensions-save-enabled")
        sections = _settings_sections(extensions)
        save_settings = gr.Button(
            "Save extension settings", visible=bool(sections), elem_id="extensions-save-settings"
        )
    with gr.Group():
        gr.Markdown("### Install an extension from a git URL")
        refusal = install_refusal(studio.settings.listen, studio.settings.allow_extension_install, True)
        url = gr.Textbox(
            label="URL",
            placeholder="https://github.com/owner/extension.git",
            interactive=refusal is None,
            elem_id="extensions-install-url",
        )
        install = gr.Button("Install", interactive=refusal is None, elem_id="extensions-install")
        if refusal is not None:
            gr.Markdown(refusal.capitalize() + ".", elem_id="extensions-install-off")
    error = gr.Markdown(visible=False, elem_id="extensions-error", elem_classes=["error-box"])
    done = gr.Markdown(elem_id="extensions-done")

    def admin_only(request: gr.Request) -> str | None:
        return None if ctx.caller(request).admin else "only an admin may change extensions"

    def run_save_enabled(request: gr.Request, chosen: list[str]) -> tuple[Any, Any]:
        if (refused := admin_only(request)) is not None:
            return show_error(refused), ""
        live.update(disabled_extensions=tuple(name for name in names if name not in chosen))
        return hide_error(), "Saved: the change applies when the app restarts."

    def run_save_settings(request: gr.Request, *values: Any) -> tuple[Any, Any]:
        if (refused := admin_only(request)) is not None:
            return show_error(refused), ""
        changed = dict(live.current.extension_settings)
        offset = 0
        for section in sections:
            names = [setting.name for setting in section.settings]
            changed[section.name] = dict(zip(names, values[offset : offset + len(names)]))
            offset += len(names)
        try:
            live.update(extension_settings=changed)
        except (ValueError, TypeError) as error:
            return show_error(str(error)), ""
        return hide_error(), "Extension settings saved and applied."

    def run_install(request: gr.Request, address: str) -> tuple[Any, Any]:
        settings = studio.settings
        why = install_refusal(settings.listen, settings.allow_extension_install, ctx.caller(request).admin)
        if why is not None:
            return show_error(why), ""
        try:
            folder = install_from_url(address, settings.data_dir / "extensions")
        except InstallError as failure:
            return show_error(str(failure)), ""
        return hide_error(), f"Installed into `extensions/{folder.name}`: restart the app to load it."

    refresh.click(lambda: status_table(extensions), outputs=table, **PRIVATE)
    save_enabled.click(run_save_enabled, inputs=enabled, outputs=[error, done], **PRIVATE)
    install.click(run_install, inputs=url, outputs=[error, done], **PRIVATE)
    controls = [control for section in sections for control in section.controls]
    if sections:
        save_settings.click(run_save_settings, inputs=controls, outputs=[error, done], **PRIVATE)

    def current() -> list[Any]:
        """The status table, the load choices and each setting as saved now."""
        values = [
            extensions.values(section.name)[setting.name]
            for section in sections
            for setting in section.settings
        ]
        chosen = [name for name in names if name not in live.current.disabled_extensions]
        return [status_table(extensions), chosen, *values]

    return ExtensionsSettings([table, enabled, *controls], current)


@dataclass
class _Section:
    name: str
    settings: list[ScriptArg]
    controls: list[gr.components.Component]


def _settings_sections(extensions: Extensions) -> list[_Section]:
    """One group of controls per extension with settings, showing the current values."""
    sections = []
    for extension, settings in extensions.settings_sections():
        current = extensions.values(extension.name)
        with gr.Group(elem_id=f"extension-settings-{extension.name}"):
            gr.Markdown(f"#### {extension.name}")
            controls = [
                script_control(
                    f"extension-settings-{extension.name}-{setting.name}",
                    replace(setting, default=current.get(setting.name, setting.default)),
                )
                for setting in settings
            ]
        sections.append(_Section(extension.name, settings, controls))
    return sections
