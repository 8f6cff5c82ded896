() => {
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
