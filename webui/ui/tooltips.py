"""Tooltips for the page's small buttons. Gradio's Button has no tooltip, so a script in the
page's head sets their `title` (what a mouse shows; a screen reader reads it as the description,
the button's own text stays its name)."""

from __future__ import annotations

import json

GENERATION_TABS = ("txt2img", "img2img", "inpaint")

# Element id -> tooltip; "{tab}" stands for each generation tab.
BY_ID: dict[str, str] = {
    "refresh-checkpoints": "Scan the model folders again (new or removed checkpoints, VAEs, LoRAs)",
    "extras-refresh": "Scan the upscaler folder again",
    "history-refresh": "Show images finished since the list was loaded",
    "{tab}-swap-size": "Swap width and height",
    "{tab}-styles-refresh": "Read styles.csv again",
    "{tab}-styles-apply": "Write the chosen styles into the prompt boxes",
    "{tab}-style-save": "Save the current prompt and negative prompt as a style with this name",
    "{tab}-send-img2img": "Send the selected result and its parameters to img2img",
    "{tab}-send-inpaint": "Send the selected result and its parameters to Inpaint",
    "{tab}-send-extras": "Send the selected result to Extras to upscale it",
    "{tab}-interrupt": "Stop this tab's job; images already finished are kept",
    "{tab}-skip": "Skip the image being made and go on with the next of the batch",
    "inpaint-clear-mask": "Remove everything painted on the picture",
}
# Buttons Gradio draws without our id (a number box's toolbar): found by their text.
BY_TEXT: dict[str, str] = {
    "Random": "Set -1: a new random seed for every job",
    "Reuse last": "Use the seed of the selected result",
}


def tooltips_by_id() -> dict[str, str]:
    expanded: dict[str, str] = {}
    for elem_id, text in BY_ID.items():
        for tab in GENERATION_TABS if "{tab}" in elem_id else ("",):
            expanded[elem_id.replace("{tab}", tab)] = text
    return expanded


def tooltips_head() -> str:
    """A script for the page's head; it labels buttons again as Gradio redraws them."""
    return f"""
<script>
(() => {{
  const byId = {json.dumps(tooltips_by_id())};
  const byText = {json.dumps(BY_TEXT)};
  const label = (element, text) => {{
    if (element && element.title !== text) element.title = text;
  }};
  const apply = () => {{
    for (const [id, text] of Object.entries(byId)) {{
      const element = document.getElementById(id);
      label(element && element.tagName !== "BUTTON" ? element.querySelector("button") : element, text);
    }}
    for (const button of document.querySelectorAll('[id$="seed"] button, [id$="subseed"] button')) {{
      const text = byText[button.textContent.trim()];
      if (text) label(button, text);
    }}
  }};
  let queued = false;
  new MutationObserver(() => {{
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {{ queued = false; apply(); }});
  }}).observe(document.documentElement, {{ childList: true, subtree: true }});
}})();
</script>
"""
