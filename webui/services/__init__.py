"""Services the page, the APIs and the CLI share: models, generation (webui.studio), outputs."""
