// One run: status, actions, live loss/metric charts, live log, its error with the last log lines, final metrics.
"use strict";

TL.pages.run = {
  async render(el, params) {
    await TL.problemTypes(); // TL.canChat reads them
    const h = TL.h;
    const id = params[0];
    const head = h("div", { id: "run-head" });
    const errorBox = h("div", { id: "run-error" });
    const charts = h("div", { id: "run-charts" });
    const finalBox = h("div", { id: "run-final" });
    const logBox = h("pre", { class: "log", id: "run-log" });
    let lastStatus = null;
    let recordsSeen = -1;

    const drawHead = (run) => {
      const links = [];
      if (run.has_report || run.status === "finished") links.push(h("a", { class: "button", id: "open-report", href: `#/report/${run.id}` }, "Report"));
      if (run.status === "finished" && TL.canChat(run)) links.push(h("a", { class: "button", href: `#/chat/${run.id}` }, "Chat"));
      if (run.status === "finished") links.push(h("a", { class: "button", href: `#/export/${run.id}` }, "Export"));
      if (run.registered) {
        links.push(h("button", { onclick: () => { TL.presetRun = run.id; location.hash = "#/new"; } }, "New experiment from this config"));
      }
      head.replaceChildren(
        h("h1", {}, run.name, " ", TL.badge(run.status, run.status_text)),
        h("p", { class: "muted mono" }, run.path),
        h("table", { class: "kv" },
          h("tr", {}, h("th", {}, "id"), h("td", { class: "mono" }, run.id)),
          h("tr", {}, h("th", {}, "problem · backbone"), h("td", {}, `${run.problem_type || "–"} · ${run.backbone || "–"}`)),
          h("tr", {}, h("th", {}, "started"), h("td", {}, TL.time(run.started))),
          h("tr", {}, h("th", {}, "duration"), h("td", { id: "run-duration" }, TL.duration(run.duration))),
          h("tr", {}, h("th", {}, "metrics"), h("td", { id: "run-metrics" }, TL.metricsText(run)))),
        h("div", { class: "toolbar" }, TL.runActions(run, refresh, "normal"), links)
      );
      if (["failed", "lost"].includes(run.status) || (run.status === "stopped" && !run.registered)) {
        const resume = run.resume_command ? ` (continue with: ${run.resume_command})` : "";
        errorBox.replaceChildren(TL.errorBox((run.error || "the run ended without a message") + resume, run.log_tail));
      } else if (run.status === "stopped") {
        errorBox.replaceChildren(h("div", { class: "note" }, "Stopped after saving a checkpoint: Resume continues exactly where it stopped."));
      } else errorBox.replaceChildren();
      finalBox.replaceChildren(run.status === "finished" ? finalMetrics(run.metrics) : "");
    };
    const drawCharts = async () => {
      const data = await TL.api("GET", `/api/runs/${id}/metrics`);
      if (data.records.length === recordsSeen) return data.status;
      recordsSeen = data.records.length;
      charts.replaceChildren(TL.metricCharts([{ label: "run", records: data.records }]));
      return data.status;
    };
    const drawLog = async () => {
      const data = await TL.api("GET", `/api/runs/${id}/log?lines=200`);
      const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
      logBox.textContent = data.lines.length ? data.lines.join("\n") : "(no output captured: the run was started outside the studio)";
      if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    };
    async function refresh() {
      let run;
      try {
        run = await TL.api("GET", `/api/runs/${id}`);
      } catch (err) {
        head.replaceChildren(TL.errorBox(err.message));
        return;
      }
      if (run.id !== id && location.hash === `#/runs/${id}`) {
        history.replaceState(null, "", `#/runs/${run.id}`); // a launch that has registered: follow its run id
      }
      const active = ACTIVE.includes(run.status);
      if (run.status !== lastStatus) drawHead(run);
      else {
        head.querySelector("#run-duration").textContent = TL.duration(run.duration);
        head.querySelector("#run-metrics").textContent = TL.metricsText(run);
      }
      if (active || run.status !== lastStatus) {
        await drawCharts();
        await drawLog();
      }
      lastStatus = run.status;
    }

    el.append(head, errorBox, TL.card("Curves (live while the run trains)", charts), finalBox, TL.card("Log", logBox));
    await refresh();
    TL.every(refresh, 1000);
  },
};

function finalMetrics(metrics) {
  const h = TL.h;
  const phases = ["before", "after", "best", "test"].filter((p) => metrics && metrics[p]);
  if (!phases.length) return "";
  const names = [...new Set(phases.flatMap((p) => Object.keys(metrics[p])))].filter((k) => k !== "step");
  return TL.card("Validation metrics",
    h("table", { class: "grid-table", id: "final-metrics" },
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), phases.map((p) => h("th", {}, p)))),
      h("tbody", {}, names.map((n) => h("tr", {}, h("td", {}, n), phases.map((p) => h("td", {}, TL.num(metrics[p][n]))))))));
}
