// New experiment page: every config field, grouped by section, with its description as help and its validation
// error beside it; start from defaults or a previous run; the planner's estimate before training starts.
"use strict";

const OPEN_GROUPS = ["basics", "dataset", "training"];

// The form's state: field texts, which fields the user changed, their inputs and error slots.
class ExperimentForm {
  constructor(schema) {
    this.schema = schema;
    this.values = {};
    this.touched = new Set();
    this.inputs = {};
    this.errors = {};
    this.optionRows = [];
    this.globalError = TL.h("div", { id: "form-error" });
    this.planBox = TL.h("div", { id: "plan" });
    this.timer = null;
  }

  setValues(values, keepTouched) {
    for (const [path, text] of Object.entries(values)) {
      if (keepTouched && this.touched.has(path)) continue;
      this.values[path] = text;
      const input = this.inputs[path];
      if (!input) continue;
      if (input.type === "checkbox") input.checked = text === "true";
      else input.value = text;
    }
    this.showOptions();
  }

  // A problem type's own fields (f.problem_types) show only for that type.
  showOptions() {
    const current = this.values.problem_type || this.defaultProblemType();
    for (const row of this.optionRows) row.hidden = !row.dataset.problemTypes.split(" ").includes(current);
  }

  async loadDefaults(problemType, keepTouched) {
    const data = await TL.api("GET", `/api/defaults?problem_type=${encodeURIComponent(problemType)}`);
    this.setValues(data.values, keepTouched);
  }

  // Each problem next to its field (opening its section); problems without a field above the form.
  showProblems(problems) {
    for (const span of Object.values(this.errors)) {
      span.textContent = "";
      span.closest(".frow").classList.remove("invalid");
    }
    const loose = [];
    for (const p of problems) {
      const span = this.errors[p.field];
      if (!span) {
        loose.push(p.field ? `${p.field}: ${p.message}` : p.message);
        continue;
      }
      span.textContent = span.textContent ? `${span.textContent}; ${p.message}` : p.message;
      span.closest(".frow").classList.add("invalid");
      span.closest("details").open = true;
    }
    this.globalError.replaceChildren(...loose.map((m) => TL.errorBox(m)));
    return problems.length === 0;
  }

  async validate() {
    const data = await TL.api("POST", "/api/validate", { values: this.values });
    return this.showProblems(data.problems);
  }

  edit(path, text) {
    this.values[path] = text;
    this.touched.add(path);
    this.planBox.replaceChildren();
    if (path === "problem_type") this.loadDefaults(text, true).then(() => this.validate());
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.validate(), 350);
  }

  showError(err) {
    if (err.problems.length) this.showProblems(err.problems);
    else if (err.field && this.errors[err.field]) this.showProblems([{ field: err.field, message: err.message }]);
    else this.globalError.replaceChildren(TL.errorBox(err.message));
  }

  groups() {
    const h = TL.h;
    return this.schema.groups.map((group) =>
      h("details", { class: "group", open: OPEN_GROUPS.includes(group.name), "data-group": group.name },
        h("summary", {}, h("span", { class: "gname" }, group.name), h("span", { class: "muted" }, ` — ${group.description}`)),
        group.fields.map((f) => fieldRow(f, this, (path, text) => this.edit(path, text), this.schema)))
    );
  }

  // Validate, ask the planner, show its estimate with the button that starts the run.
  async review() {
    if (!(await this.validate())) {
      const marked = Object.entries(this.errors).filter(([, span]) => span.textContent).map(([path]) => path);
      return this.planBox.replaceChildren(TL.errorBox(`fix the marked fields first: ${marked.join(", ") || "see above"}`));
    }
    this.planBox.replaceChildren(TL.h("p", { class: "muted" }, "planning (reads the data, measures one layer)…"));
    try {
      const plan = await TL.api("POST", "/api/plan", { values: this.values });
      this.planBox.replaceChildren(renderPlan(plan, () => this.start()));
    } catch (err) {
      this.planBox.replaceChildren(TL.errorBox(err.message));
      this.showError(err);
    }
  }

  async start() {
    try {
      const run = await TL.api("POST", "/api/experiments", { values: this.values });
      TL.toast(`started ${run.name}`);
      location.hash = `#/runs/${run.id}`;
    } catch (err) {
      this.showError(err);
    }
  }

  // The schema's default problem type (RunConfig's default).
  defaultProblemType() {
    return this.schema.groups[0].fields.find((f) => f.name === "problem_type").default;
  }

  async fromRun(runId) {
    if (!runId) return this.loadDefaults(this.values.problem_type || this.defaultProblemType(), false);
    const data = await TL.api("GET", `/api/runs/${runId}/config`);
    this.touched = new Set(Object.keys(data.values));
    this.setValues(data.values, false);
    this.edit("experiment_name", `${data.values.experiment_name}-2`);
    this.inputs.experiment_name.value = this.values.experiment_name;
  }
}

TL.pages.new = {
  async render(el) {
    const h = TL.h;
    const form = new ExperimentForm(await TL.schema());
    const fromRun = h("select", { id: "from-run", onchange: () => form.fromRun(fromRun.value) },
      h("option", { value: "" }, "— defaults —"));
    el.append(
      h("h1", {}, "New experiment"),
      h("div", { class: "toolbar" }, TL.field("start from a previous run's config", fromRun)),
      form.globalError,
      h("div", { class: "groups" }, form.groups()),
      h("div", { class: "actions sticky" },
        h("button", { id: "check", onclick: () => form.validate() }, "Check"),
        h("button", { class: "primary", id: "review", onclick: () => form.review() }, "Estimate & review →")),
      form.planBox
    );
    const preset = TL.presetRun;
    const fromDataset = TL.newExperiment;
    TL.presetRun = TL.newExperiment = null;
    await form.loadDefaults((fromDataset && fromDataset.problem_type) || form.defaultProblemType(), false);
    if (fromDataset) {
      for (const [path, text] of Object.entries(fromDataset)) form.edit(path, text);
      form.setValues(fromDataset, false);
    }
    for (const run of await TL.runs()) fromRun.append(h("option", { value: run.id }, `${run.name} (${run.status})`));
    if (preset) {
      fromRun.value = preset;
      await form.fromRun(preset);
    }
    form.validate();
  },
};

function fieldRow(f, form, onEdit, schema) {
  const h = TL.h;
  let input;
  const attrs = { name: f.path, id: `f-${f.path}` };
  if (f.kind === "bool") {
    input = h("input", { ...attrs, type: "checkbox" });
    input.addEventListener("change", () => onEdit(f.path, input.checked ? "true" : "false"));
  } else if (f.kind === "choice") {
    input = TL.select(f.choices, undefined, attrs);
    input.addEventListener("change", () => onEdit(f.path, input.value));
  } else {
    const listId = f.kind === "open_choice" || f.path === "llm_backbone" ? `dl-${f.path}` : null;
    const text = h("input", { ...attrs, type: "text", list: listId, spellcheck: "false" });
    text.addEventListener("input", () => onEdit(f.path, text.value));
    input = text;
    if (listId) {
      const options = f.path === "llm_backbone" ? schema.backbones.map((b) => b.name) : f.choices;
      input = h("span", { class: "combo" }, text, h("datalist", { id: listId }, options.map((o) => h("option", { value: o }))));
    }
  }
  const real = input.tagName === "SPAN" ? input.querySelector("input") : input;
  form.inputs[f.path] = real;
  const error = h("span", { class: "field-error", "data-error-for": f.path });
  form.errors[f.path] = error;
  const owners = f.problem_types ? `(problem_type: ${f.problem_types.join(", ")})` : "";
  const help = [owners, f.description, f.kind === "list" && f.choices.length ? `Choices: ${f.choices.join(", ")}.` : "",
    f.bounds ? `Allowed: ${f.bounds}.` : "", `Default: ${f.default === "" ? "(empty)" : f.default}.`].filter(Boolean).join(" ");
  const only = f.problem_types ? { "data-problem-types": f.problem_types.join(" ") } : {};
  const row = h("div", { class: "frow", "data-field": f.path, ...only },
    h("label", { for: attrs.id, class: "fname", title: f.path }, f.name),
    h("div", { class: "fbody" }, input, error, h("small", { class: "help" }, help)));
  if (f.problem_types) form.optionRows.push(row);
  return row;
}

function renderPlan(plan, start) {
  const h = TL.h;
  const time = plan.estimated_seconds === null ? "unknown" : TL.duration(plan.estimated_seconds);
  return TL.card("Before you start: the planner's estimate",
    h("p", { class: plan.fits ? "lead ok" : "lead bad", id: "plan-summary" },
      `Peak memory ${plan.peak_gb.toFixed(2)} GB of ${plan.budget_gb.toFixed(1)} GB (${plan.fits ? "fits" : "does NOT fit"}) on ${plan.device}; `,
      `${TL.num(plan.total_steps)} steps of ${plan.batch_size} × ${plan.seq_len} tokens, about ${time} of training.`),
    h("table", { class: "kv" },
      Object.entries(plan.parts_gb).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, `${v.toFixed(3)} GB`))),
      h("tr", {}, h("th", {}, "parameters"), h("td", {}, `${TL.num(plan.trainable)} trainable of ${TL.num(plan.parameters)}`)),
      h("tr", {}, h("th", {}, "training rows"), h("td", {}, TL.num(plan.train_rows)))),
    h("ul", { class: "findings" }, plan.findings.map((f) => h("li", { class: `finding ${f.level}` }, f.message))),
    h("button", { class: "primary", id: "start", onclick: start }, "Start training"));
}
