"""Says when a typed number was out of a slider's range. Gradio moves such a value to the nearest
bound without a word (steps 0 became 1); this script in the page's head shows, under the slider,
what the range is and what was used instead."""

from __future__ import annotations

RANGE_NOTES_HEAD = """
<script>
document.addEventListener("change", (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || box.type !== "number") return;
  const block = box.closest("[id]");
  if (!block || !block.querySelector('input[type="range"]')) return;  // sliders only
  const typed = Number(box.value), low = Number(box.min), high = Number(box.max);
  if (box.value === "" || box.min === "" || box.max === "" || Number.isNaN(typed)) return;
  let note = block.querySelector(".range-note");
  if (typed >= low && typed <= high) { if (note) note.remove(); return; }
  if (!note) {
    note = document.createElement("div");
    note.className = "range-note";
    note.setAttribute("role", "status");
    block.appendChild(note);
  }
  const used = typed < low ? low : high;
  note.textContent = `${typed} is outside ${low} to ${high}: ${used} is used.`;
}, true);
</script>
"""
