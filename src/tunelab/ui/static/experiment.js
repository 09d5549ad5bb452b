// New experiment page: every config field, grouped by section, with its description as help and its validation
// error beside it; start from defaults or a previous run; the planner's estimate before training starts.
"use strict";

const OPEN_GROUPS = ["basics", "dataset", "training"];

TL.pages.new = {
  async render(el) {
    const h = TL.h;
    const schema = await TL.schema();
    const form = { values: {}, touched: new Set(), inputs: {}, errors: {} };
    const globalError = h("div", { id: "form-error" });
    const planBox = h("div", { id: "plan" });
    const fromRun = h("select", { id: "from-run" }, h("option", { value: "" }, "— defaults —"));
    const groupsBox = h("div", { class: "groups" });

    const setValues = (values, keepTouched) => {
      for (const [path, text] of Object.entries(values)) {
        if (keepTouched && form.touched.has(path)) continue;
        form.values[path] = text;
        const input = form.inputs[path];
        if (!input) continue;
        if (input.type === "checkbox") input.checked = text === "true";
        else input.value = text;
      }
    };
    const loadDefaults = async (problemType, keepTouched) => {
      const data = await TL.api("GET", `/api/defaults?problem_type=${encodeURIComponent(problemType)}`);
      setValues(data.values, keepTouched);
    };
    const showProblems = (problems) => {
      for (const span of Object.values(form.errors)) span.textContent = "";
      for (const row of el.querySelectorAll(".frow.invalid")) row.classList.remove("invalid");
      const loose = [];
      for (const p of problems) {
        const span = form.errors[p.field];
        if (span) {
          span.textContent = span.textContent ? `${span.textContent}; ${p.message}` : p.message;
          span.closest(".frow").classList.add("invalid");
          span.closest("details").open = true;
        } else loose.push(p.field ? `${p.field}: ${p.message}` : p.message);
      }
      globalError.replaceChildren(...loose.map((m) => TL.errorBox(m)));
      return problems.length === 0;
    };
    let validateTimer = null;
    const validate = async () => {
      const data = await TL.api("POST", "/api/validate", { values: form.values });
      return showProblems(data.problems);
    };
    const onEdit = (path, text) => {
      form.values[path] = text;
      form.touched.add(path);
      planBox.replaceChildren();
      if (path === "problem_type") loadDefaults(text, true).then(validate);
      clearTimeout(validateTimer);
      validateTimer = setTimeout(validate, 350);
    };

    for (const group of schema.groups) {
      const rows = group.fields.map((f) => fieldRow(f, form, onEdit, schema));
      groupsBox.append(
        h("details", { class: "group", open: OPEN_GROUPS.includes(group.name), "data-group": group.name },
          h("summary", {}, h("span", { class: "gname" }, group.name), h("span", { class: "muted" }, ` — ${group.description}`)),
          rows)
      );
    }

    const review = async () => {
      if (!(await validate())) return TL.toast("fix the marked fields first", "bad");
      planBox.replaceChildren(h("p", { class: "muted" }, "planning (reads the data, measures one layer)…"));
      try {
        const plan = await TL.api("POST", "/api/plan", { values: form.values });
        planBox.replaceChildren(renderPlan(plan, start));
      } catch (err) {
        planBox.replaceChildren(TL.errorBox(err.message));
        if (err.problems.length) showProblems(err.problems);
      }
    };
    const start = async () => {
      try {
        const run = await TL.api("POST", "/api/experiments", { values: form.values });
        TL.toast(`started ${run.name}`);
        location.hash = `#/runs/${run.id}`;
      } catch (err) {
        if (err.field && form.errors[err.field]) showProblems([{ field: err.field, message: err.message }]);
        else globalError.replaceChildren(TL.errorBox(err.message));
        if (err.problems.length) showProblems(err.problems);
      }
    };
    fromRun.addEventListener("change", async () => {
      if (!fromRun.value) return loadDefaults(form.values.problem_type || "causal_lm", false);
      const data = await TL.api("GET", `/api/runs/${fromRun.value}/config`);
      form.touched = new Set(Object.keys(data.values));
      setValues(data.values, false);
      onEdit("experiment_name", `${data.values.experiment_name}-2`);
      form.inputs.experiment_name.value = form.values.experiment_name;
    });

    el.append(
      h("h1", {}, "New experiment"),
      h("div", { class: "toolbar" }, TL.field("start from a previous run's config", fromRun)),
      globalError,
      groupsBox,
      h("div", { class: "actions sticky" },
        h("button", { id: "check", onclick: validate }, "Check"),
        h("button", { class: "primary", id: "review", onclick: review }, "Estimate & review →")),
      planBox
    );
    const preset = TL.presetRun;
    TL.presetRun = null;
    await loadDefaults((TL.newExperiment && TL.newExperiment.problem_type) || "causal_lm", false);
    if (TL.newExperiment) {
      for (const [path, text] of Object.entries(TL.newExperiment)) onEdit(path, text);
      setValues(TL.newExperiment, false);
      TL.newExperiment = null;
    }
    const runs = await TL.runs();
    for (const run of runs) fromRun.append(h("option", { value: run.id }, `${run.name} (${run.status})`));
    if (preset) {
      fromRun.value = preset;
      fromRun.dispatchEvent(new Event("change"));
    }
    validate();
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
  const help = [f.description, f.kind === "list" && f.choices.length ? `Choices: ${f.choices.join(", ")}.` : "",
    f.bounds ? `Allowed: ${f.bounds}.` : "", `Default: ${f.default === "" ? "(empty)" : f.default}.`].filter(Boolean).join(" ");
  return h("div", { class: "frow", "data-field": f.path },
    h("label", { for: attrs.id, class: "fname", title: f.path }, f.name),
    h("div", { class: "fbody" }, input, error, h("small", { class: "help" }, help)));
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
