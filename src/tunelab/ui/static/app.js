// tunelab studio: the hash router (#/page/param) that shows one page at a time.
"use strict";

TL.routes = {
  datasets: "datasets",
  new: "new",
  runs: "runs",
  compare: "compare",
  report: "report",
  chat: "chat",
  export: "export",
};

TL.route = async function () {
  for (const id of TL.timers) clearInterval(id);
  TL.timers = [];
  TL.paused = false;
  const parts = (location.hash.replace(/^#\/?/, "") || "runs").split("/").filter(Boolean);
  let name = TL.routes[parts[0]] || "runs";
  if (name === "runs" && parts[1]) name = "run";
  for (const a of document.querySelectorAll("#nav a")) {
    const page = a.dataset.page;
    a.classList.toggle("active", page === parts[0] || (page === "runs" && ["run", "compare", "report"].includes(name)));
  }
  TL.routeToken = (TL.routeToken || 0) + 1;
  const page = document.getElementById("page");
  const el = document.createElement("div"); // a page still loading when the user moves on fills a detached box
  page.replaceChildren(el);
  page.dataset.page = name;
  try {
    await TL.pages[name].render(el, parts.slice(1));
  } catch (err) {
    el.append(TL.errorBox(err.message));
  }
  if (el.isConnected) page.dataset.ready = "1";
};

window.addEventListener("hashchange", () => {
  document.getElementById("page").dataset.ready = "";
  TL.route();
});
window.addEventListener("DOMContentLoaded", TL.route);
