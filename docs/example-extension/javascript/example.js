// Extensions' javascript/*.js files are added to the page's <head>, in load order. Gradio adds
// them after the document has loaded, so run at once rather than waiting for DOMContentLoaded.
const markExampleLoaded = () => {
  document.documentElement.dataset.exampleExtension = "loaded";
};
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", markExampleLoaded);
} else {
  markExampleLoaded();
}
