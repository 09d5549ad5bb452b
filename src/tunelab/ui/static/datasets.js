// Datasets page: upload or point to a file, then see it exactly as training will (tokens, data check, lengths).
"use strict";

// A guess of how to read a file from its columns; the user can change every choice before inspecting.
// ``types``: the problem types' facts (TL.problemTypes): a label column picks the first type trained on labelled
// rows (classes, not numbers), otherwise the first trained on conversations.
function guessSettings(columns, types) {
  const has = (name) => columns.includes(name);
  const labelCol = ["label", "labels", "class", "category", "sentiment", "target"].find(has);
  if (labelCol) {
    const text = columns.find((c) => c !== labelCol) || "text";
    const labelled = TL.firstProblemType(types, (t) => t.labelled && !t.numeric_labels);
    return { problem_type: labelled, prompt: text, answer: "", label: labelCol };
  }
  const chat = TL.firstProblemType(types, (t) => t.data_kinds[0] === "conversation");
  const pairs = [["question", "answer"], ["prompt", "response"], ["prompt", "completion"], ["input", "output"], ["instruction", "output"]];
  for (const [p, a] of pairs) if (has(p) && has(a)) return { problem_type: chat, prompt: p, answer: a, label: "" };
  return { problem_type: chat, prompt: columns[0] || "instruction", answer: columns[1] || "output", label: "" };
}

// The "choose a file" card: upload (refused uploads say why), a path on the server, the uploaded files.
function filePanel(state, choose) {
  const h = TL.h;
  const fileInput = h("input", { type: "file", id: "upload-file", accept: ".csv,.tsv,.json,.jsonl,.parquet,.txt,.gz" });
  const message = h("span", { class: "field-error", id: "upload-error" });
  const help = h("small", {});
  const list = h("ul", { class: "uploads" });
  const pathInput = h("input", { type: "text", id: "data-path", value: state.path, placeholder: "/path/on/the/server/data.jsonl" });
  const refresh = async () => {
    const data = await TL.api("GET", "/api/datasets");
    const pick = (u) => (e) => { e.preventDefault(); choose(u.path, null); };
    list.replaceChildren(...data.uploads.map((u) => h("li", {}, h("a", { href: "#", onclick: pick(u) }, u.name), ` ${TL.bytes(u.bytes)}`)));
    help.textContent = `Files up to ${data.max_upload_mb} MB are stored in the studio's data folder.`;
  };
  const upload = async () => {
    message.textContent = "";
    const file = fileInput.files[0];
    if (!file) return (message.textContent = "choose a file first");
    try {
      const data = await TL.api("POST", `/api/datasets/upload?name=${encodeURIComponent(file.name)}`, file);
      choose(data.path, data.columns);
      TL.toast(`uploaded ${data.name}`);
      await refresh();
    } catch (err) {
      message.textContent = err.message;
    }
  };
  const card = TL.card("1 · Choose a file",
    h("div", { class: "row" }, fileInput, h("button", { id: "upload", onclick: upload }, "Upload"), message), help,
    TL.field("…or a file on the server", pathInput, "CSV, TSV, JSON, JSONL, Parquet or text (also .gz), a glob, or a saved dataset folder."),
    h("h3", {}, "Uploaded files"), list);
  return { card, refresh, pathInput };
}

TL.pages.datasets = {
  async render(el) {
    const h = TL.h;
    const schema = await TL.schema();
    const types = await TL.problemTypes();
    const defaultOf = (name) => schema.groups[0].fields.find((f) => f.name === name).default;
    const state = TL.datasetState || (TL.datasetState = { path: "" });
    const formats = schema.groups.find((g) => g.name === "dataset").fields.find((f) => f.name === "format").choices;
    const ctl = {
      problem: TL.select(schema.problem_types, state.problem_type || defaultOf("problem_type"), { id: "ds-problem" }),
      backbone: h("input", { id: "ds-backbone", list: "ds-backbones", value: state.backbone || "" }),
      format: TL.select(formats, state.format || "auto", { id: "ds-format" }),
      prompt: h("input", { id: "ds-prompt", value: state.prompt || "" }),
      answer: h("input", { id: "ds-answer", value: state.answer || "" }),
      label: h("input", { id: "ds-label", value: state.label || "" }),
    };
    const result = h("div", { id: "inspect-result" });
    const facts = () => types[ctl.problem.value] || { starter: {} };
    const defaultBackbone = () => facts().starter.llm_backbone || defaultOf("llm_backbone");
    const choose = (path, columns) => {
      files.pathInput.value = state.path = path;
      if (!columns || !columns.length) return;
      const g = guessSettings(columns, types);
      ctl.problem.value = g.problem_type;
      [ctl.prompt.value, ctl.answer.value, ctl.label.value] = [g.prompt, g.answer, g.label];
      ctl.backbone.value = defaultBackbone();
    };
    const files = filePanel(state, choose);
    const values = () => {
      const v = { problem_type: ctl.problem.value, llm_backbone: ctl.backbone.value || defaultBackbone(), "dataset.format": ctl.format.value };
      if (ctl.prompt.value) v["dataset.prompt_column"] = ctl.prompt.value;
      if (ctl.answer.value) v["dataset.answer_column"] = ctl.answer.value;
      if (ctl.label.value) v["dataset.label_column"] = ctl.label.value;
      return v;
    };
    const inspect = async () => {
      Object.assign(state, { path: files.pathInput.value, problem_type: ctl.problem.value, backbone: ctl.backbone.value,
        format: ctl.format.value, prompt: ctl.prompt.value, answer: ctl.answer.value, label: ctl.label.value });
      result.replaceChildren(h("p", { class: "muted" }, "reading and tokenising…"));
      try {
        const data = await TL.api("POST", "/api/datasets/inspect", { path: files.pathInput.value, values: values() });
        result.replaceChildren(renderInspection(data, values()));
      } catch (err) {
        result.replaceChildren(TL.errorBox(err.message));
      }
    };
    if (!ctl.backbone.value) ctl.backbone.value = defaultBackbone();
    ctl.problem.addEventListener("change", () => (ctl.backbone.value = defaultBackbone()));
    const backbones = h("datalist", { id: "ds-backbones" }, schema.backbones.map((b) => h("option", { value: b.name }, b.description)));
    el.append(
      h("h1", {}, "Datasets"),
      h("div", { class: "grid2" }, files.card,
        TL.card("2 · How to read it",
          TL.field("problem type", ctl.problem),
          TL.field("backbone (its tokenizer renders the rows)", h("span", { class: "combo" }, ctl.backbone, backbones)),
          TL.field("format", ctl.format, "'auto' detects it from the first row."),
          TL.field("prompt column(s)", ctl.prompt, "Several: comma-separated."),
          TL.field("answer column (types trained on answers)", ctl.answer),
          TL.field("label column (types trained on labelled rows)", ctl.label),
          h("button", { class: "primary", id: "inspect", onclick: inspect }, "Inspect"))),
      result
    );
    await files.refresh();
  },
};

function renderInspection(data, values) {
  const h = TL.h;
  const r = data.report;
  const pct = (d) => (d && Object.keys(d).length ? Object.entries(d).map(([k, v]) => `${k} ${TL.num(v)}`).join(", ") : "–");
  const rows = [
    ["rows", TL.num(r.rows)], ["tokens", TL.num(r.tokens)], ["prompt tokens", pct(r.prompt_tokens)],
    ["answer tokens", pct(r.answer_tokens)], ["answers truncated", `${(100 * r.truncated_share).toFixed(1)}%`],
    ["rows with nothing trained", TL.num(r.zero_trained_rows)], ["trained share of tokens", `${(100 * r.trained_token_share).toFixed(1)}%`],
    ["answers without EOS", TL.num(r.rows_without_eos)], ["empty rows", TL.num(r.empty_rows)], ["duplicated rows", TL.num(r.duplicate_rows)],
  ];
  if (r.label_counts && Object.keys(r.label_counts).length) {
    rows.push(["labels", Object.entries(r.label_counts).map(([k, v]) => `${k} ${v}`).join(", ")]);
  }
  const useIt = () => {
    TL.newExperiment = { ...values, "dataset.train_dataframe": data.path };
    location.hash = "#/new";
  };
  return h("div", {},
    TL.card("Data check",
      h("p", { class: "lead" }, "Detected format: ", h("strong", { id: "detected-format" }, data.format),
        ` · columns: ${data.columns.join(", ")}`),
      h("ul", { class: "findings", id: "findings" }, data.findings.map((f) => h("li", { class: `finding ${f.level}` }, f.message))),
      h("table", { class: "kv" }, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
      h("button", { class: "primary", id: "use-dataset", onclick: useIt }, "Use in a new experiment →")),
    TL.card("Rows as the model sees them",
      data.preview.some((row) => row.label !== undefined)
        ? h("p", { class: "muted" }, "The whole text is the model's input; the label is what it learns to predict.")
        : h("p", { class: "muted" }, "Trained tokens are ", h("span", { class: "tok trained" }, "green"), "; masked tokens (no loss) are ",
          h("span", { class: "tok" }, "grey"), ". Special tokens and the chat template are shown as they are."),
      data.preview.map((row) =>
        h("div", { class: "preview-row" },
          h("div", { class: "muted" }, `row ${row.row} · ${row.tokens} tokens`, row.label !== undefined ? ` · label ${row.label}` : ""),
          h("pre", { class: "tokens" }, row.segments.map((s) => h("span", { class: s.trained ? "tok trained" : "tok" }, s.text)))))),
    TL.card("Length histogram", TL.histogram(data.histogram))
  );
}
