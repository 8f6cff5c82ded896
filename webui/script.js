() => {
  // Token counter debounce (A1111's): restart a timer on every change of a prompt box; when it fires,
  // click that box's hidden "count tokens" button so the server counts the latest text once.
  const tokenTimers = {};
  window.paletteCountTokensSoon = (boxId, delay) => {
    clearTimeout(tokenTimers[boxId]);
    tokenTimers[boxId] = setTimeout(() => document.getElementById(`${boxId}-token-button`)?.click(), delay);
  };

  // Ctrl+Enter (Cmd+Enter on macOS) in a prompt box clicks that tab's Generate button, as in A1111.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const box = event.target.closest("[id$='-prompt'], [id$='-negative-prompt']");
    if (!box) return;
    const tab = box.id.replace(/-(negative-)?prompt$/, "");
    const button = document.getElementById(`${tab}-generate`);
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
}
