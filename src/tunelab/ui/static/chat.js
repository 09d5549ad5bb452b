// Chat page: one model, or two side by side (e.g. the base model against the fine-tuned one), streamed answers.
"use strict";

// Reads an SSE body (OpenAI chunks) and calls onText with each new piece of text.
async function streamChat(payload, onText) {
  const res = await fetch("/api/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(payload),
  });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      message = (await res.json()).error.message;
    } catch (e) { /* keep the status line */ }
    throw new Error(message);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
      if (piece) onText(piece);
    }
  }
}

TL.pages.chat = {
  async render(el, params) {
    const h = TL.h;
    await TL.problemTypes();
    const runs = (await TL.runs()).filter((r) => r.status === "finished" && TL.canChat(r));
    const options = [["", "— none —"]];
    for (const r of runs) {
      options.push([`run:${r.id}`, `${r.name} (fine-tuned)`]);
      options.push([`base:${r.id}`, `${r.name} — its base model`]);
    }
    const first = params[0] ? `run:${params[0]}` : options.length > 1 ? options[1][0] : "";
    const pickA = TL.select(options, first, { id: "chat-a" });
    const pickB = TL.select(options, "", { id: "chat-b" });
    const temperature = h("input", { id: "chat-temperature", type: "number", step: "0.1", min: "0", max: "2", value: "0.7" });
    const topP = h("input", { id: "chat-top-p", type: "number", step: "0.05", min: "0.05", max: "1", value: "0.9" });
    const maxTokens = h("input", { id: "chat-max-tokens", type: "number", min: "1", max: "4096", value: "128" });
    const topK = h("input", { id: "chat-top-k", type: "number", min: "0", step: "1", value: "0" });
    const beams = h("input", { id: "chat-beams", type: "number", min: "1", max: "64", step: "1", value: "1" });
    const seed = h("input", { id: "chat-seed", type: "number", min: "0", step: "1", placeholder: "none" });
    const system = h("input", { id: "chat-system", placeholder: "optional system prompt" });
    const prompt = h("textarea", { id: "chat-input", rows: 3, placeholder: "Ask something…" });
    const send = h("button", { class: "primary", id: "chat-send" }, "Send");
    const sides = { A: { pick: pickA, messages: [], box: h("div", { class: "transcript", id: "transcript-A" }) },
      B: { pick: pickB, messages: [], box: h("div", { class: "transcript", id: "transcript-B" }) } };
    const clear = () => {
      for (const side of Object.values(sides)) {
        side.messages = [];
        side.box.replaceChildren();
      }
    };
    const ask = async (side, text) => {
      const [kind, runId] = side.pick.value.split(":");
      side.messages.push({ role: "user", content: text });
      side.box.append(h("div", { class: "msg user" }, text));
      const answer = h("div", { class: "msg assistant streaming" });
      side.box.append(answer);
      const messages = system.value ? [{ role: "system", content: system.value }, ...side.messages] : side.messages;
      const payload = { run: runId, base: kind === "base", messages, max_tokens: Number(maxTokens.value) || 128 };
      const t = Number(temperature.value);
      payload.temperature = isFinite(t) ? t : 0.7;
      if (payload.temperature > 0) payload.top_p = Number(topP.value) || 0.9;
      if (payload.temperature > 0 && Number(topK.value) > 0) payload.top_k = Number(topK.value);
      if (Number(beams.value) > 1) payload.num_beams = Number(beams.value);
      if (seed.value !== "") payload.seed = Number(seed.value);
      let text_ = "";
      try {
        await streamChat(payload, (piece) => {
          text_ += piece;
          answer.textContent = text_;
          side.box.scrollTop = side.box.scrollHeight;
        });
        side.messages.push({ role: "assistant", content: text_ });
      } catch (err) {
        answer.replaceChildren(TL.errorBox(err.message));
        side.messages.pop();
      }
      answer.classList.remove("streaming");
      answer.classList.add("done");
    };
    const submit = async () => {
      const text = prompt.value.trim();
      if (!text) return;
      const active = Object.values(sides).filter((s) => s.pick.value);
      if (!active.length) return TL.toast("pick a model first", "bad");
      prompt.value = "";
      send.disabled = true;
      await Promise.all(active.map((side) => ask(side, text)));
      send.disabled = false;
    };
    send.addEventListener("click", submit);
    prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        submit();
      }
    });
    pickA.addEventListener("change", clear);
    pickB.addEventListener("change", clear);
    el.append(
      h("h1", {}, "Chat"),
      runs.length ? "" : h("p", { class: "muted" }, "No finished causal-LM run yet: chat needs one."),
      TL.card(null,
        h("div", { class: "row wrap" },
          TL.field("model A", pickA), TL.field("model B (side by side)", pickB),
          TL.field("temperature (0 = greedy)", temperature), TL.field("top_p", topP), TL.field("top_k (0 = off)", topK),
          TL.field("beams", beams), TL.field("seed", seed), TL.field("max tokens", maxTokens)),
        TL.field("system prompt", system)),
      h("div", { class: "chat-columns" },
        TL.card("A", sides.A.box),
        TL.card("B", sides.B.box)),
      h("div", { class: "chat-input" }, prompt, h("div", {}, send, h("button", { onclick: clear }, "Clear")))
    );
  },
};
