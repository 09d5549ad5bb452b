// Experiments page: the run registry as a table (live), actions, and the comparison of selected runs.
"use strict";

const ACTIVE = ["starting", "running", "resuming", "stopping"];

TL.runActions = function (run, after, size) {
  const h = TL.h;
  const cls = size || "small";
  const act = async (label, method, path) => {
    TL.paused = false;
    try {
      await TL.api(method, path);
      TL.toast(`${label}: ${run.name}`);
      if (method === "DELETE" && location.hash.startsWith("#/runs/")) location.hash = "#/runs";
    } catch (err) {
      TL.toast(err.message, "bad");
    }
    if (after) after();
  };
  const out = [];
  if (["running", "starting", "resuming"].includes(run.status)) {
    out.push(h("button", { class: cls, "data-action": "stop", onclick: () => act("stopping", "POST", `/api/runs/${run.id}/stop`) }, "Stop"));
  }
  if (["stopped", "failed", "lost"].includes(run.status) && run.registered) {
    out.push(h("button", { class: cls, "data-action": "resume", onclick: () => act("resuming", "POST", `/api/runs/${run.id}/resume`) }, "Resume"));
  }
  if (!ACTIVE.includes(run.status)) {
    const cell = h("span", { class: "confirm" });
    const ask = () => {
      cell.replaceChildren(
        h("button", { class: "small danger", "data-action": "delete-files", onclick: () => act("deleted", "DELETE", `/api/runs/${run.id}?files=true`) }, "Delete run and files"),
        h("button", { class: "small", "data-action": "delete-entry", onclick: () => act("removed", "DELETE", `/api/runs/${run.id}`) }, "Only from the list"),
        h("button", { class: "small", onclick: () => { TL.paused = false; cell.replaceChildren(deleteBtn); } }, "Cancel"));
      TL.paused = true;
    };
    const deleteBtn = h("button", { class: `${cls} danger`, "data-action": "delete", onclick: ask }, "Delete");
    cell.append(deleteBtn);
    out.push(cell);
  }
  return out;
};

TL.pages.runs = {
  async render(el) {
    const h = TL.h;
    const selected = new Set();
    const tbody = h("tbody", { id: "runs-body" });
    const compareBtn = h("button", { id: "compare", disabled: true }, "Compare selected");
    const empty = h("p", { class: "muted" });
    compareBtn.addEventListener("click", () => (location.hash = `#/compare/${[...selected].join(",")}`));
    const draw = async () => {
      if (TL.paused) return; // a delete is waiting for its confirmation
      let runs;
      try {
        runs = await TL.runs();
      } catch (err) {
        return TL.toast(err.message, "bad");
      }
      empty.textContent = runs.length ? "" : "No runs yet: start one on New experiment, or run `tunelab train` with this output directory.";
      tbody.replaceChildren(
        ...runs.map((run) => {
          const box = h("input", { type: "checkbox", checked: selected.has(run.id), "aria-label": `select ${run.name}` });
          box.addEventListener("change", () => {
            box.checked ? selected.add(run.id) : selected.delete(run.id);
            compareBtn.disabled = selected.size < 2;
          });
          return h("tr", { "data-run": run.id, "data-name": run.name, "data-status": run.status },
            h("td", {}, box),
            h("td", {}, h("a", { href: `#/runs/${run.id}` }, run.name),
              run.error && ["failed", "lost"].includes(run.status) ? h("div", { class: "row-error" }, run.error) : null),
            h("td", {}, TL.badge(run.status, run.status_text)),
            h("td", {}, run.problem_type || "–"),
            h("td", { class: "mono" }, shortBackbone(run.backbone)),
            h("td", { class: "metrics" }, TL.metricsText(run)),
            h("td", {}, run.step !== null && run.step !== undefined ? TL.num(run.step) : "–"),
            h("td", {}, TL.duration(run.duration)),
            h("td", { class: "actions-cell" }, TL.runActions(run, draw)));
        })
      );
    };
    el.append(
      h("h1", {}, "Experiments"),
      h("div", { class: "toolbar" }, compareBtn, h("a", { class: "button primary", href: "#/new" }, "New experiment")),
      h("table", { class: "runs" },
        h("thead", {}, h("tr", {}, ["", "name", "status", "problem", "backbone", "metrics", "step", "duration", ""].map((t) => h("th", {}, t)))),
        tbody),
      empty
    );
    await draw();
    TL.every(draw, 2000);
  },
};

function shortBackbone(name) {
  if (!name) return "–";
  const parts = name.split("/");
  return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : name;
}

TL.pages.compare = {
  async render(el, params) {
    const h = TL.h;
    const ids = (params[0] || "").split(",").filter(Boolean);
    el.append(h("h1", {}, "Compare runs"));
    let data;
    try {
      data = await TL.api("POST", "/api/compare", { ids });
    } catch (err) {
      return el.append(TL.errorBox(err.message));
    }
    const head = h("tr", {}, h("th", {}, "field"), data.runs.map((r) => h("th", {}, r.name)));
    const diffs = Object.entries(data.differences);
    const show = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
    el.append(
      TL.card("Config differences",
        diffs.length
          ? h("table", { class: "grid-table", id: "config-diff" }, h("thead", {}, head),
            h("tbody", {}, diffs.map(([k, vals]) => h("tr", {}, h("td", { class: "mono" }, k), vals.map((v) => h("td", {}, show(v)))))))
          : h("p", { class: "muted" }, "The configs are identical.")),
      TL.card("Metrics after training",
        h("table", { class: "grid-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "metric"), data.runs.map((r) => h("th", {}, r.name)))),
          h("tbody", {}, Object.entries(data.metrics).map(([k, vals]) => h("tr", {}, h("td", {}, k), vals.map((v) => h("td", {}, TL.num(v)))))))),
      TL.card("Curves", TL.metricCharts(data.runs.map((r, i) => ({ label: r.name, records: data.curves[i] }))))
    );
  },
};

TL.pages.report = {
  async render(el, params) {
    const h = TL.h;
    const id = params[0];
    el.append(
      h("div", { class: "toolbar" }, h("a", { href: `#/runs/${id}` }, "← back to the run"),
        h("a", { href: `/api/runs/${id}/report`, target: "_blank", rel: "noopener" }, "open in its own tab")),
      h("iframe", { class: "report", id: "report-frame", src: `/api/runs/${id}/report`, title: "run report" })
    );
  },
};
