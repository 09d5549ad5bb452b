// Datasets page: upload or point to a file, then see it exactly as training will (tokens, data check, lengths).
"use strict";

// A guess of how to read a file from its columns; the user can change every choice before inspecting.
function guessSettings(columns) {
  const has = (name) => columns.includes(name);
  const labelCol = ["label", "labels", "class", "category", "sentiment", "target"].find(has);
  if (labelCol) {
    const text = columns.find((c) => c !== labelCol) || "text";
    return { problem_type: "classification", prompt: text, answer: "", label: labelCol };
  }
  const pairs = [["question", "answer"], ["prompt", "response"], ["prompt", "completion"], ["input", "output"], ["instruction", "output"]];
  for (const [p, a] of pairs) if (has(p) && has(a)) return { problem_type: "causal_lm", prompt: p, answer: a, label: "" };
  return { problem_type: "causal_lm", prompt: columns[0] || "instruction", answer: columns[1] || "output", label: "" };
}

TL.pages.datasets = {
  async render(el) {
    const h = TL.h;
    const schema = await TL.schema();
    const state = TL.datasetState || (TL.datasetState = { path: "", columns: [] });
    const fileInput = h("input", { type: "file", id: "upload-file", accept: ".csv,.tsv,.json,.jsonl,.parquet,.txt,.gz" });
    const uploadMsg = h("span", { class: "field-error", id: "upload-error" });
    const pathInput = h("input", { type: "text", id: "data-path", value: state.path, placeholder: "/path/on/the/server/data.jsonl" });
    const uploadsList = h("ul", { class: "uploads" });
    const problem = TL.select(schema.problem_types, state.problem_type || "causal_lm", { id: "ds-problem" });
    const backbone = h("input", { id: "ds-backbone", list: "ds-backbones", value: state.backbone || "" });
    const backbones = h("datalist", { id: "ds-backbones" }, schema.backbones.map((b) => h("option", { value: b.name }, b.description)));
    const format = TL.select(
      schema.groups.find((g) => g.name === "dataset").fields.find((f) => f.name === "format").choices,
      state.format || "auto",
      { id: "ds-format" }
    );
    const promptCol = h("input", { id: "ds-prompt", value: state.prompt || "" });
    const answerCol = h("input", { id: "ds-answer", value: state.answer || "" });
    const labelCol = h("input", { id: "ds-label", value: state.label || "" });
    const inspectBtn = h("button", { class: "primary", id: "inspect" }, "Inspect");
    const result = h("div", { id: "inspect-result" });

    const defaultBackbone = () => (problem.value === "classification" || problem.value === "regression" ? "all-minilm-l6-v2" : "smollm2-135m-instruct");
    const applyGuess = (columns) => {
      const g = guessSettings(columns);
      problem.value = g.problem_type;
      promptCol.value = g.prompt;
      answerCol.value = g.answer;
      labelCol.value = g.label;
      if (!backbone.value) backbone.value = defaultBackbone();
    };
    const choose = (path, columns) => {
      pathInput.value = path;
      state.path = path;
      if (columns && columns.length) applyGuess(columns);
    };
    const refreshUploads = async () => {
      const data = await TL.api("GET", "/api/datasets");
      uploadsList.replaceChildren(
        ...data.uploads.map((u) =>
          h("li", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); choose(u.path, null); } }, u.name), ` ${TL.bytes(u.bytes)}`)
        )
      );
      uploadHelp.textContent = `Files up to ${data.max_upload_mb} MB are stored in the studio's data folder.`;
    };
    const uploadHelp = h("small", {});
    const upload = async () => {
      uploadMsg.textContent = "";
      const file = fileInput.files[0];
      if (!file) return (uploadMsg.textContent = "choose a file first");
      try {
        const data = await TL.api("POST", `/api/datasets/upload?name=${encodeURIComponent(file.name)}`, file);
        choose(data.path, data.columns);
        TL.toast(`uploaded ${data.name}`);
        await refreshUploads();
      } catch (err) {
        uploadMsg.textContent = err.message;
      }
    };
    const values = () => {
      const v = { problem_type: problem.value, llm_backbone: backbone.value || defaultBackbone(), "dataset.format": format.value };
      if (promptCol.value) v["dataset.prompt_column"] = promptCol.value;
      if (answerCol.value) v["dataset.answer_column"] = answerCol.value;
      if (labelCol.value) v["dataset.label_column"] = labelCol.value;
      return v;
    };
    const inspect = async () => {
      Object.assign(state, { path: pathInput.value, problem_type: problem.value, backbone: backbone.value, format: format.value,
        prompt: promptCol.value, answer: answerCol.value, label: labelCol.value });
      result.replaceChildren(h("p", { class: "muted" }, "reading and tokenising…"));
      try {
        const data = await TL.api("POST", "/api/datasets/inspect", { path: pathInput.value, values: values() });
        result.replaceChildren(renderInspection(data, values()));
      } catch (err) {
        result.replaceChildren(TL.errorBox(err.message));
      }
    };
    inspectBtn.addEventListener("click", inspect);
    if (!backbone.value) backbone.value = defaultBackbone();
    problem.addEventListener("change", () => { backbone.value = defaultBackbone(); });

    el.append(
      h("h1", {}, "Datasets"),
      h("div", { class: "grid2" },
        TL.card("1 · Choose a file",
          h("div", { class: "row" }, fileInput, h("button", { id: "upload", onclick: upload }, "Upload"), uploadMsg),
          uploadHelp,
          TL.field("…or a file on the server", pathInput, "CSV, TSV, JSON, JSONL, Parquet or text (also .gz), a glob, or a saved dataset folder."),
          h("h3", {}, "Uploaded files"), uploadsList),
        TL.card("2 · How to read it",
          TL.field("problem type", problem),
          TL.field("backbone (its tokenizer renders the rows)", h("span", { class: "combo" }, backbone, backbones)),
          TL.field("format", format, "'auto' detects it from the first row."),
          TL.field("prompt column(s)", promptCol, "Several: comma-separated."),
          TL.field("answer column (causal LM)", answerCol),
          TL.field("label column (classification, regression)", labelCol),
          inspectBtn)),
      result
    );
    await refreshUploads();
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
      h("p", { class: "muted" }, "Trained tokens are ", h("span", { class: "tok trained" }, "green"), "; masked tokens (no loss) are ",
        h("span", { class: "tok" }, "grey"), ". Special tokens and the chat template are shown as they are."),
      data.preview.map((row) =>
        h("div", { class: "preview-row" },
          h("div", { class: "muted" }, `row ${row.row} · ${row.tokens} tokens`, row.label !== undefined ? ` · label ${row.label}` : ""),
          h("pre", { class: "tokens" }, row.segments.map((s) => h("span", { class: s.trained ? "tok trained" : "tok" }, s.text)))))),
    TL.card("Length histogram", TL.histogram(data.histogram))
  );
}
