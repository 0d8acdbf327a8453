"""The call-centre agent's page: one self-contained HTML document (no external asset; a Bento
carries `nba/**/*.py`, so it lives in a module).

It reads the customer 360 (`GET /customers/{id}`), asks `/decide` for the agent's channel
(that decision is logged and counts as a contact: the agent is about to present it), shows
the top action with its reason in words, and records the customer's answer through
`/respond`: accepted, rejected, or not now (ignored). On a service with API keys it asks
for the agent's key once (kept in the tab's session storage, sent as X-API-Key); the key
needs `customers` and the agent's channels, and `respond`.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Customer 360 - next best action</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f6f8; color: #1d2730; }
  header { background: #17324d; color: #fff; padding: 12px 20px; display: flex; gap: 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; flex: 1; }
  header input, header select, header button { font-size: 14px; padding: 4px 8px; }
  main { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; padding: 14px 20px; }
  section { background: #fff; border-radius: 6px; padding: 10px 14px; box-shadow: 0 1px 2px #0002; }
  section h2 { font-size: 15px; margin: 0 0 8px; color: #17324d; }
  #nba-panel { grid-column: 1 / 3; border-left: 6px solid #2a7ab8; }
  #top-action { font-size: 20px; font-weight: 600; }
  #top-reason { margin: 6px 0 10px; color: #33485c; }
  .buttons button { font-size: 15px; padding: 8px 16px; margin-right: 8px; border: 0; border-radius: 4px;
                    cursor: pointer; color: #fff; }
  #accepted { background: #2f8f46; } #rejected { background: #b83a3a; } #not-now { background: #6b7785; }
  #outcome { margin-top: 10px; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  td, th { text-align: left; padding: 2px 6px; border-bottom: 1px solid #e3e7eb; vertical-align: top; }
  .muted { color: #6b7785; } .error { color: #b83a3a; font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>Customer 360</h1>
  <label>Customer <input id="customer-id" size="10"></label>
  <label>Channel <select id="channel"></select></label>
  <button id="load">Load</button>
</header>
<main>
  <section id="nba-panel">
    <h2>Next best action (<span id="nba-channel"></span>)</h2>
    <div id="top-action" class="muted">loading...</div>
    <div id="top-reason"></div>
    <div class="buttons">
      <button id="accepted" data-outcome="accepted" disabled>Accepted</button>
      <button id="rejected" data-outcome="rejected" disabled>Rejected</button>
      <button id="not-now" data-outcome="ignored" disabled>Not now</button>
    </div>
    <div id="outcome"></div>
  </section>
  <section><h2>Profile</h2><table id="profile"></table></section>
  <section><h2>Scores and segments</h2><table id="scores"></table></section>
  <section><h2>Holdings</h2><table id="holdings"></table></section>
  <section><h2>Consents and preferences</h2><table id="consents"></table></section>
  <section><h2>Other channels (preview, not counted as contacts)</h2><table id="previews"></table></section>
  <section><h2>Why other actions are not offered</h2><table id="filtered"></table></section>
  <section><h2>Last decisions</h2><table id="decisions"></table></section>
  <section><h2>Recent events</h2><table id="events"></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;  // the decision shown to the agent

function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"]/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}
function fmt(v) {
  return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v;
}
function rows(id, pairs) {
  $(id).innerHTML = pairs.length ? pairs.map((p) => "<tr>" + p.map((c) => "<td>" + esc(fmt(c)) + "</td>").join("")
    + "</tr>").join("") : '<tr><td class="muted">none</td></tr>';
}
function words(a) {
  const boost = a.lever ? ", boosted x" + (1 + a.lever) + " by the business" : "";
  return Math.round(a.propensity * 100) + "% likely to accept, worth " + a.value.toFixed(2)
    + " EUR if accepted" + boost + " (priority " + a.priority.toFixed(2) + ")";
}
async function api(path, body, retried) {
  const headers = body === undefined ? {} : {"Content-Type": "application/json"};
  const key = sessionStorage.getItem("nba_api_key");  // a keyed service: the agent's key, asked once
  if (key) headers["X-API-Key"] = key;
  const resp = await fetch(path, body === undefined ? {headers} : {method: "POST", headers, body: JSON.stringify(body)});
  if (resp.status === 401 && !retried) {
    const given = window.prompt("This service needs your API key");
    if (given) { sessionStorage.setItem("nba_api_key", given.trim()); return api(path, body, true); }
  }
  const data = await resp.json();
  if (!resp.ok) throw new Error(data.error || JSON.stringify(data));
  return data;
}

async function load() {
  const id = $("customer-id").value.trim();
  const channel = $("channel").value || "call_centre";
  $("nba-channel").textContent = channel;
  $("outcome").textContent = "";
  $("top-reason").textContent = "";
  document.querySelectorAll(".buttons button").forEach((b) => { b.disabled = true; });
  const at = new URLSearchParams(location.search).get("at");  // a moment other than now (a replay, a test)
  history.replaceState(null, "", "/agent/" + encodeURIComponent(id) + "?channel=" + encodeURIComponent(channel)
                       + (at ? "&at=" + encodeURIComponent(at) : ""));
  let c;
  try {
    c = await api("/customers/" + encodeURIComponent(id) + (at ? "?at=" + encodeURIComponent(at) : ""));
  } catch (e) {
    $("top-action").innerHTML = '<span class="error">' + esc(e.message) + "</span>";
    return;
  }
  rows("profile", Object.entries(c.profile));
  rows("scores", [["churn risk (90 days)", c.scores.churn_risk === undefined ? "" : (c.scores.churn_risk * 100).toFixed(1) + "%"],
                  ["customer lifetime value", c.scores.clv === undefined ? "" : c.scores.clv.toFixed(2) + " EUR"],
                  ...Object.entries(c.segments)]);
  rows("holdings", Object.entries(c.holdings).map(([k, v]) => [k.replace(/^has_/, ""), v === 1 ? "yes" : v === 0 ? "no" : v]));
  rows("consents", [...Object.entries(c.consents).map(([ch, s]) => [ch, s.effective ? "consent" : "no consent",
                      s.preference_centre === null ? "from the bank's records" : "set in the preference centre"]),
                    ...(c.preferences ? [["quiet hours", c.preferences.quiet_hours ? c.preferences.quiet_hours.start
                      + "-" + c.preferences.quiet_hours.end + " " + c.preferences.timezone : "none", ""],
                      ["topics not wanted", c.preferences.topics_blocked.join(", ") || "none", ""],
                      ["last changed", c.preferences.updated_at, c.preferences.updated_by]] : [])]);
  const why = (p) => {  // why a channel has nothing: the first channel-wide reason, else the threshold
    const f = p.filtered.find((x) => ["consent", "preference", "cap", "suppression"].includes(x.stage));
    return f ? f.reason_in_words : "no action is worth a contact now";
  };
  rows("previews", Object.entries(c.next_best_actions).filter(([ch]) => ch !== channel).map(([ch, p]) =>
    [ch, p.actions.length ? p.actions[0].name : "nothing", p.actions.length ? p.actions[0].reason_in_words : why(p)]));
  const mine = c.next_best_actions[channel] || {filtered: []};
  rows("filtered", mine.filtered.filter((f) => f.stage !== "channel").map((f) => [f.action_id, f.reason_in_words]));
  rows("decisions", c.last_decisions.map((d) => [d.decided_at, d.channel, d.action_id,
    d.outcomes.length ? d.outcomes.map((o) => o.outcome).join(", ") : "no outcome"]));
  rows("events", c.recent_events.map((e) => [e.timestamp, e.type]));
  // the agent is about to present it: a real decision (logged, counted as a contact)
  try {
    current = await api("/decide", Object.assign({customer_id: Number(id), channel: channel, k: 3},
                                                 at ? {timestamp: at} : {}));
  } catch (e) {
    $("top-action").innerHTML = '<span class="error">' + esc(e.message) + "</span>";
    return;
  }
  const top = current.actions[0];
  if (!top) {
    $("top-action").classList.remove("muted");
    $("top-action").textContent = "Nothing to offer now";
    $("top-reason").textContent = "No action is above the do-nothing threshold for this customer on " + channel + ".";
    return;
  }
  $("top-action").classList.remove("muted");
  $("top-action").textContent = top.name;
  $("top-action").dataset.actionId = top.action_id;
  $("top-reason").textContent = words(top) + "; " + top.reason;
  document.querySelectorAll(".buttons button").forEach((b) => { b.disabled = false; });
}

async function respond(outcome) {
  const top = current && current.actions[0];
  if (!top) return;
  document.querySelectorAll(".buttons button").forEach((b) => { b.disabled = true; });
  try {
    const r = await api("/respond", {decision_id: current.decision_id, action_id: top.action_id, outcome: outcome,
                                     value: outcome === "accepted" ? top.value : 0});
    $("outcome").textContent = "Outcome recorded: " + r.outcome + (r.duplicate ? " (already recorded)" : "")
      + " at " + r.responded_at;
    $("outcome").dataset.decisionId = r.decision_id;
  } catch (e) {
    $("outcome").innerHTML = '<span class="error">' + esc(e.message) + "</span>";
  }
}

function init() {
  const channels = __CHANNELS__;  // the catalog's channels, filled in by the service
  $("channel").innerHTML = channels.map((c) => '<option value="' + c + '">' + c + "</option>").join("");
  const params = new URLSearchParams(location.search);
  if (params.get("channel")) $("channel").value = params.get("channel");
  const fromPath = location.pathname.replace(/^\\/agent\\/?/, "");
  if (fromPath) $("customer-id").value = decodeURIComponent(fromPath);
  $("load").addEventListener("click", load);
  document.querySelectorAll(".buttons button").forEach((b) =>
    b.addEventListener("click", () => respond(b.dataset.outcome)));
  if ($("customer-id").value) load();
}
init();
</script>
</body>
</html>
"""
