// Extensions' javascript/*.js files are added to the page's <head>, in load order.
document.addEventListener("DOMContentLoaded", () => {
  document.documentElement.dataset.exampleExtension = "loaded";
});
