// Export page: adapter / merged / GGUF exports of a finished run, their parity check, and downloads.
"use strict";

TL.pages.export = {
  async render(el, params) {
    const h = TL.h;
    const runs = (await TL.runs()).filter((r) => r.status === "finished");
    const pick = TL.select(runs.map((r) => [r.id, `${r.name} (${r.problem_type})`]), params[0] || (runs[0] && runs[0].id), { id: "export-run" });
    const format = TL.select([["adapter", "adapter (peft)"], ["merged", "merged (transformers)"], ["gguf", "GGUF (llama.cpp)"]], "adapter", { id: "export-format" });
    const dtype = TL.select(["float32", "float16", "bfloat16"], "float32", { id: "export-dtype" });
    const quant = TL.select(["q8_0", "f16", "f32"], "q8_0", { id: "export-quant" });
    const error = h("div", { id: "export-error" });
    const jobsBox = h("div", { id: "export-jobs" });
    const listBox = h("div", { id: "export-list" });
    const go = async () => {
      error.replaceChildren();
      try {
        await TL.api("POST", `/api/runs/${pick.value}/exports`, { format: format.value, dtype: dtype.value, quant: quant.value });
        TL.toast("export started");
        await draw();
      } catch (err) {
        error.replaceChildren(TL.errorBox(err.message));
      }
    };
    const draw = async () => {
      if (!pick.value) return;
      const data = await TL.api("GET", `/api/runs/${pick.value}/exports`);
      jobsBox.replaceChildren(
        ...data.jobs.slice(-3).reverse().map((job) =>
          h("div", { class: "job" },
            h("strong", {}, `${job.format} export `), job.running ? TL.badge("running") : job.error ? TL.badge("failed") : TL.badge("finished"),
            ` started ${TL.time(job.started)}`,
            job.error ? TL.errorBox(job.error, job.log_tail) : job.running ? h("pre", { class: "log short" }, job.log_tail.slice(-6).join("\n")) : null))
      );
      listBox.replaceChildren(
        data.exports.length
          ? h("table", { class: "grid-table", id: "exports-table" },
            h("thead", {}, h("tr", {}, ["export", "parity check", "details", "size", ""].map((t) => h("th", {}, t)))),
            h("tbody", {}, data.exports.map((x) => h("tr", { "data-export": x.name },
              h("td", { class: "mono" }, x.name),
              h("td", {}, TL.badge(x.parity.passed ? "passed" : "failed")),
              h("td", { class: "small-text" }, Object.entries(x.parity).filter(([k]) => k !== "passed")
                .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : TL.num(v)}`).join(", ")),
              h("td", {}, TL.bytes(x.bytes)),
              h("td", {}, h("a", { class: "button small", href: `/api/runs/${pick.value}/exports/${encodeURIComponent(x.name)}/download` }, "Download"))))))
          : h("p", { class: "muted" }, "No export of this run yet.")
      );
    };
    pick.addEventListener("change", draw);
    el.append(
      h("h1", {}, "Export"),
      runs.length ? "" : h("p", { class: "muted" }, "No finished run yet."),
      TL.card("Export a run",
        h("div", { class: "row wrap" }, TL.field("run", pick), TL.field("format", format),
          TL.field("merged dtype", dtype), TL.field("GGUF tensor type", quant)),
        h("p", { class: "muted" }, "Every export is checked against the trained model on 8 validation prompts (the parity check)."),
        h("button", { class: "primary", id: "export-start", onclick: go }, "Export"), error),
      TL.card("Export jobs", jobsBox),
      TL.card("Exports", listBox)
    );
    await draw();
    TL.every(draw, 3000);
  },
};
