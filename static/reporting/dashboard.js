/* The reporting dashboard: polls its JSON endpoint and redraws the charts in place (Chart.js, vendored). */
(function () {
  "use strict";
  var root = document.getElementById("dashboard");
  if (!root || typeof Chart === "undefined") { return; }
  var form = document.getElementById("dashboard-filters");
  var dataUrl = root.dataset.url;
  var refreshMs = Math.max(2, parseInt(root.dataset.refreshSeconds, 10) || 5) * 1000;
  var timer = null;
  var charts = {};

  form.elements.tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

  function money(minor, currency, exponent) {
    if (minor === null || minor === undefined) { return "—"; }
    var digits = exponent === null || exponent === undefined ? 2 : exponent;
    return new Intl.NumberFormat(undefined, {
      style: "currency", currency: currency, minimumFractionDigits: digits, maximumFractionDigits: digits
    }).format(minor / Math.pow(10, digits));
  }
  function percent(ratio) {
    return ratio === null || ratio === undefined ? "—" : (ratio * 100).toFixed(1) + " %";
  }
  function label(iso, bucket) {
    var d = new Date(iso);
    if (bucket === "hour") { return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }); }
    if (bucket === "month") { return d.toLocaleDateString(undefined, { year: "numeric", month: "short" }); }
    return d.toLocaleDateString();
  }
  function text(id, value) { document.getElementById(id).textContent = value; }
  // A converted total (its minor units in data-amount-minor) and, under it, its amounts per currency.
  function total(id, detailId, tile, currency, exponent) {
    var element = document.getElementById(id);
    element.dataset.amountMinor = tile.total_minor === null ? "" : tile.total_minor;
    element.textContent = money(tile.total_minor, currency, exponent);
    text(detailId, tile.by_currency.map(function (c) { return money(c.amount_minor, c.currency, c.exponent); }).join(" + ") +
      (tile.missing_rates.length ? " (no rate for " + tile.missing_rates.join(", ") + ")" : ""));
  }

  function chart(name, config) {
    var canvas = document.querySelector('canvas[data-chart="' + name + '"]');
    if (!charts[name]) {
      config.options = Object.assign({ responsive: true, animation: false, maintainAspectRatio: false }, config.options || {});
      charts[name] = new Chart(canvas, config);
    } else {
      charts[name].data = config.data;
      charts[name].update();
    }
    canvas.dataset.updatedAt = new Date().toISOString();
    // Empty axes say nothing: a chart with no value to draw says so in words.
    var empty = config.data.labels.length === 0 || config.data.datasets.every(function (set) {
      return set.data.every(function (value) { return value === null || value === 0; });
    });
    var note = canvas.parentNode.querySelector(".no-data");
    if (!note) {
      note = Object.assign(document.createElement("p"), { className: "no-data", textContent: "No data for these filters." });
      canvas.parentNode.insertBefore(note, canvas);
    }
    note.hidden = !empty;
    canvas.dataset.empty = empty ? "true" : "false";
  }

  function render(data) {
    var rev = data.revenue;
    var asOf = document.getElementById("data-as-of");
    asOf.setAttribute("datetime", data.as_of);
    asOf.textContent = new Date(data.as_of).toLocaleString();
    text("fx-rate-date", data.fx.rate_date ? data.fx.rate_date + " (" + data.fx.base + ")" : "— (" + (data.fx.error || "no rates") + ")");
    total("total-revenue", "revenue-by-currency", rev, data.currency, rev.exponent);
    var net = document.getElementById("net-revenue");
    net.dataset.amountMinor = data.net_revenue.total_minor === null ? "" : data.net_revenue.total_minor;
    net.textContent = money(data.net_revenue.total_minor, data.currency, rev.exponent);
    var noData = document.getElementById("no-data");
    noData.textContent = data.no_data;
    noData.hidden = !data.no_data;
    text("total-payments", rev.total_payments);
    text("total-refunds", data.refunds.total_refunds);
    text("total-reversals", data.refunds.total_reversals);
    text("refunded-amount", money(data.refunds.refunded.total_minor, data.currency, rev.exponent));
    text("reversed-amount", money(data.refunds.reversed.total_minor, data.currency, rev.exponent));
    document.getElementById("latency-note").hidden = !data.latency_ignores_app_filter;

    var labels = rev.labels.map(function (iso) { return label(iso, rev.bucket); });
    chart("revenue", {
      type: "bar",
      data: { labels: labels, datasets: [
        { type: "bar", label: "revenue (" + data.currency + ")", yAxisID: "money",
          data: rev.amount_minor.map(function (m) { return m === null ? null : m / Math.pow(10, rev.exponent); }) },
        { type: "line", label: "payments", yAxisID: "count", data: rev.payments }
      ] },
      options: { scales: { money: { position: "left", beginAtZero: true }, count: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } },
        plugins: { tooltip: { callbacks: { label: function (ctx) {
          return ctx.dataset.yAxisID === "money" ? money(Math.round(ctx.raw * Math.pow(10, rev.exponent)), data.currency, rev.exponent) : ctx.raw + " payments";
        } } } } }
    });
    text("funnel-name", data.funnel.name || "(no funnel defined)");
    chart("funnel", {
      type: "bar",
      data: { labels: data.funnel.steps.map(function (s) { return s.step; }),
        datasets: [{ label: "journeys", data: data.funnel.steps.map(function (s) { return s.reached; }) }] },
      options: { indexAxis: "y" }
    });
    var carriers = data.carriers.map(function (c) { return c.carrier; });
    chart("success-rate", {
      type: "bar",
      data: { labels: carriers, datasets: [{ label: "success rate %", data: data.carriers.map(function (c) {
        return c.success_rate === null ? null : Math.round(c.success_rate * 1000) / 10; }) }] },
      options: { scales: { y: { min: 0, max: 100 } } }
    });
    chart("latency", {
      type: "bar",
      data: { labels: carriers, datasets: [
        { label: "average", data: data.carriers.map(function (c) { return c.avg_latency_ms; }) },
        { label: "max", data: data.carriers.map(function (c) { return c.max_latency_ms; }) }
      ] }
    });
    chart("refunds", {
      type: "bar",
      data: { labels: labels, datasets: [
        { label: "refunds", data: data.refunds.refunds }, { label: "reversals", data: data.refunds.reversals }
      ] }
    });
    chart("errors", {
      type: "bar",
      data: { labels: data.errors.map(function (e) { return e.code; }),
        datasets: [{ label: "failed payments", data: data.errors.map(function (e) { return e.count; }) }] },
      options: { indexAxis: "y" }
    });

    var body = document.querySelector("#carrier-table tbody");
    body.replaceChildren.apply(body, data.carriers.map(function (c) {
      var tr = document.createElement("tr");
      tr.dataset.carrier = c.carrier;
      [c.carrier, c.payments, percent(c.success_rate), c.calls, c.failed_calls,
       c.avg_latency_ms === null ? "—" : Math.round(c.avg_latency_ms), c.max_latency_ms === null ? "—" : c.max_latency_ms
      ].forEach(function (value) { var td = document.createElement("td"); td.textContent = value; tr.appendChild(td); });
      return tr;
    }));
    renderSubscriptions(data);
    var list = document.getElementById("alert-list");
    var events = data.alerts.open.concat(data.alerts.recent.filter(function (e) { return e.state === "resolved"; }));
    list.replaceChildren.apply(list, events.length ? events.map(function (e) {
      var li = document.createElement("li");
      li.dataset.alertState = e.state;
      li.textContent = e.state + ": " + e.rule + (e.key ? " [" + e.key + "]" : "") + " — " + e.condition +
        ", value " + e.fired_value_text + " at " + new Date(e.fired_at).toLocaleString() +
        (e.resolved_at ? ", resolved at " + new Date(e.resolved_at).toLocaleString() + " (" + e.resolved_value_text + ")" : "");
      return li;
    }) : [Object.assign(document.createElement("li"), { textContent: "No alerts." })]);
  }

  function renderSubscriptions(data) {
    var subs = data.subscriptions;
    var error = document.getElementById("subscriptions-error");
    error.hidden = !subs.error;
    error.textContent = subs.error || "";
    if (subs.error) { return; }
    var now = subs.subscribers;
    text("subscribers-now", now.total);
    text("subscribers-by-status", now.active + " active, " + now.past_due + " past due, " + now.suspended + " suspended");
    text("new-subscribers", subs.total_new_subscribers);
    text("churned-subscribers", subs.total_churned_subscribers);
    text("churned-detail", subs.total_cancelled_subscribers + " cancelled, " + subs.total_expired_subscribers + " expired");
    var rev = subs.revenue;
    total("recurring-revenue", "recurring-by-currency", rev, rev.currency, rev.exponent);
    var arpu = document.getElementById("arpu");
    arpu.dataset.amountMinor = subs.arpu.amount_minor === null ? "" : subs.arpu.amount_minor;
    arpu.textContent = money(subs.arpu.amount_minor, subs.arpu.currency, subs.arpu.exponent);
    var base = subs.arpu.average_subscribers;
    text("arpu-detail", base ? "average base: " + base + (base === 1 ? " subscriber" : " subscribers") : "no subscribers");
    chart("subscriptions", {
      type: "bar",
      data: { labels: subs.labels.map(function (iso) { return label(iso, subs.bucket); }), datasets: [
        { label: "recurring revenue (" + rev.currency + ")", yAxisID: "y",
          data: rev.amount_minor.map(function (m) { return m === null ? null : m / Math.pow(10, rev.exponent); }) },
        { label: "new", type: "line", yAxisID: "y1", data: subs.new_subscribers },
        { label: "churned", type: "line", yAxisID: "y1", data: subs.churned_subscribers }
      ] },
      options: { scales: { y: { position: "left" }, y1: { position: "right", grid: { drawOnChartArea: false } } } }
    });
    var body = document.querySelector("#renewal-table tbody");
    body.replaceChildren.apply(body, subs.renewals.map(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.carrier = r.carrier;
      [r.carrier, r.periods_decided, r.periods_renewed, percent(r.success_rate), r.attempts, r.failed, percent(r.attempt_success_rate)].forEach(function (value) {
        var td = document.createElement("td"); td.textContent = value; tr.appendChild(td);
      });
      return tr;
    }));
  }

  function query() { return new URLSearchParams(new FormData(form)).toString(); }

  // The export links ask the payments dataset for what the dashboard shows: its period and filters.
  function updateExports(data) {
    var exports = document.getElementById("exports");
    var params = new URLSearchParams(exports.dataset.exportQuery);  // the server's, never a link's rewritten one
    params.set("since", data.period.since);
    params.set("until", data.period.until);
    params.set("tz", data.timezone || "UTC");
    ["app", "country", "carrier"].forEach(function (name) {
      var value = form.elements[name].value;
      if (value) { params.set("f." + name, value); }
    });
    document.querySelectorAll("[data-export-base]").forEach(function (link) {
      link.href = link.dataset.exportBase + "?" + params.toString();
    });
  }

  function refresh() {
    clearTimeout(timer);
    var error = document.getElementById("dashboard-error");
    fetch(dataUrl + "?" + query(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) { throw new Error(body.detail || response.statusText); }
          return body;
        });
      })
      .then(function (data) { error.hidden = true; render(data); updateExports(data); })
      .catch(function (err) { error.hidden = false; error.textContent = "Could not update: " + err.message; })
      .finally(function () { timer = setTimeout(refresh, refreshMs); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    history.replaceState(null, "", "?" + query());
    refresh();
  });
  form.addEventListener("change", function () { history.replaceState(null, "", "?" + query()); refresh(); });
  refresh();
})();
