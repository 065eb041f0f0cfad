// Redraws every [data-field] and tbody[data-rows] from the JSON endpoint. Cells are
// written with textContent only (never HTML); formats mirror status_page.format_value.
(function () {
  "use strict";
  const DASH = "\u2014";
  const pad = (n) => String(n).padStart(2, "0");
  function span(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d " + pad(Math.floor((s % 86400) / 3600)) + "h";
  }
  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    for (let i = 0; ; i++) {
      if (Math.abs(n) < 1000 || i === units.length - 1) {
        return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
      }
      n /= 1000;
    }
  }
  const FORMATS = {
    text: (v) => String(v),
    int: (v) => Math.trunc(v).toLocaleString("en-US"),
    age: span,
    in: span,
    bytes: bytes,
    percent: (v) => Number(v).toFixed(1) + " %",
    rate: (v) => Number(v).toFixed(1),
    time: (v) => String(v).replace("T", " ").replace(/\.\d+/, ""),
    states: (v) => v.map((s) => s.state + ": " + s.context).join("; ") || DASH,
  };
  function fmt(value, kind) {
    if (value === null || value === undefined) return DASH;
    return (FORMATS[kind] || FORMATS.text)(value);
  }
  function lookup(obj, path) {
    for (const part of path.split(".")) {
      if (obj === null || typeof obj !== "object") return undefined;
      obj = obj[part];
    }
    return obj;
  }
  function cell(text, className, colSpan) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    if (colSpan) td.colSpan = colSpan;
    return td;
  }
  function render(status) {
    for (const el of document.querySelectorAll("[data-field]")) {
      const value = lookup(status, el.dataset.field);
      el.textContent = fmt(value, el.dataset.format);
      if (el.classList.contains("pill")) el.dataset.value = value == null ? "" : String(value);
    }
    for (const body of document.querySelectorAll("tbody[data-rows]")) {
      const columns = Array.from(body.parentElement.querySelectorAll("th[data-key]"));
      const rows = [];
      for (const item of lookup(status, body.dataset.rows) || []) {
        const tr = document.createElement("tr");
        for (const th of columns) {
          const text = fmt(lookup(item, th.dataset.key), th.dataset.format);
          tr.appendChild(cell(text, th.classList.contains("num") ? "num" : ""));
        }
        rows.push(tr);
      }
      if (!rows.length) {
        const tr = document.createElement("tr");
        tr.appendChild(cell(body.dataset.empty, "empty", columns.length));
        rows.push(tr);
      }
      body.replaceChildren(...rows);
    }
  }
  const endpoint = document.body.dataset.endpoint;
  const every = Number(document.body.dataset.pollMs) || 2000;
  const conn = document.getElementById("conn");
  async function poll() {
    try {
      const resp = await fetch(endpoint, {
        cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" },
      });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      render(await resp.json());
      conn.textContent = "live";
      conn.dataset.value = "live";
    } catch (err) {
      conn.textContent = "stale (" + err.message + ")";
      conn.dataset.value = "stale";
    }
    setTimeout(poll, every);
  }
  setTimeout(poll, every);
})();
