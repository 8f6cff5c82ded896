() => {
  // Token counter debounce (A1111's): restart a timer on every change of a prompt box; when it fires,
  // click that box's hidden "count tokens" button so the server counts the latest text once.
  const tokenTimers = {};
  window.paletteCountTokensSoon = (boxId, delay) => {
    clearTimeout(tokenTimers[boxId]);
    tokenTimers[boxId] = setTimeout(() => document.getElementById(`${boxId}-token-button`)?.click(), delay);
  };

  // Extra networks (webui/extra_networks.py): a card click appends its text to the tab's prompt with
  // ", " before it (nothing when the prompt is empty), then tells Gradio the box changed.
  window.paletteAppendToPrompt = (prompt, text) => {
    const trimmed = (prompt || "").replace(/\s+$/, "");
    if (!trimmed) return text;
    return trimmed.endsWith(",") ? `${trimmed} ${text}` : `${trimmed}, ${text}`;
  };
  const addNetwork = (card) => {
    const box = document.querySelector(`#${card.dataset.target} textarea`);
    if (!box) return;
    box.value = window.paletteAppendToPrompt(box.value, card.dataset.text);
    box.dispatchEvent(new Event("input", { bubbles: true }));
  };
  document.addEventListener("click", (event) => {
    const card = event.target.closest(".palette-network-card");
    if (card) addNetwork(card);
  });
  document.addEventListener("keydown", (event) => {
    const card = event.target.closest?.(".palette-network-card");
    if (card && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      addNetwork(card);
    }
  });
  // The search box hides cards whose name lacks the text (the same rule as extra_networks.matches).
  document.addEventListener("input", (event) => {
    const search = event.target.closest?.("[id$='-networks-search']");
    if (!search) return;
    const q = (event.target.value || "").trim().toLowerCase();
    const tab = search.id.replace(/-networks-search$/, "");
    document.querySelectorAll(`#${tab}-extra-networks .palette-network-card`).forEach((card) => {
      card.style.display = card.dataset.name.includes(q) ? "" : "none";
    });
  });

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
