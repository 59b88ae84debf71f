// The SOP operator console page: plain JavaScript, no framework, nothing from a CDN.
// REST for the login; one WebSocket (/api/live) for the live fleet and every command to a robot.
"use strict";

const state = {
  csrf: null,
  username: null,
  role: null,
  socket: null,
  robots: [],
  selected: null,
  teleopRateHz: 30,
  keys: new Set(),
  gripper: -1, // -1 open, +1 closed
  gripperChanged: false,
  teleopTimer: null,
  renewTimer: null,
  leaseTtlS: 30,
  wasMoving: false,
  teleopSent: 0,
  reconnectTimer: null,
  gamepadGripperDown: false,
};

const $ = (id) => document.getElementById(id);
const MOVE_KEYS = { KeyD: [0, 1], KeyA: [0, -1], KeyW: [1, 1], KeyS: [1, -1], KeyE: [2, 1], KeyQ: [2, -1] };

function notice(text, isError) {
  const el = $("notice");
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let document = null;
  if (response.status !== 204) {
    try { document = await response.json(); } catch (e) { document = null; }
  }
  if (!response.ok) {
    const detail = document && document.detail ? document.detail : response.statusText;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return document;
}

function canOperate() { return state.role === "operator" || state.role === "admin"; }

function showLogin(message) {
  closeSocket();
  $("console-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  notice(message || "", !!message);
  $("login-username").focus();
}

function showConsole(session) {
  state.csrf = session.csrf_token;
  state.username = session.username;
  state.role = session.role;
  state.teleopRateHz = session.teleop_rate_hz || 30;
  $("who-name").textContent = session.username;
  $("who-role").textContent = session.role;
  document.body.dataset.role = session.role;
  $("who").hidden = false;
  $("login-view").hidden = true;
  $("console-view").hidden = false;
  notice("");
  openSocket();
}

async function login(event) {
  event.preventDefault();
  try {
    const session = await api("POST", "/api/login", {
      username: $("login-username").value,
      password: $("login-password").value,
    });
    $("login-password").value = "";
    showConsole(session);
  } catch (error) {
    notice("Login refused: " + error.message, true);
  }
}

async function logout() {
  try { await api("POST", "/api/logout"); } catch (error) { /* the session may be gone already */ }
  state.csrf = null;
  showLogin("Logged out.");
}

function closeSocket() {
  if (state.reconnectTimer) { clearTimeout(state.reconnectTimer); state.reconnectTimer = null; }
  if (state.socket) {
    const socket = state.socket;
    state.socket = null;
    socket.onclose = null;
    socket.close();
  }
  stopTeleop();
}

function openSocket() {
  closeSocket();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/live`);
  state.socket = socket;
  $("link-state").textContent = "connecting";
  socket.onopen = () => {
    $("link-state").textContent = "live";
    if (state.selected) send({ type: "watch", robot_id: state.selected });
  };
  socket.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    handle(message);
  };
  socket.onclose = (event) => {
    state.socket = null;
    stopTeleop();
    $("link-state").textContent = "disconnected";
    if (event.code === 4401) { showLogin(event.reason || "Please log in again."); return; }
    state.reconnectTimer = setTimeout(async () => {
      try { showConsole(await api("GET", "/api/session")); }
      catch (error) { showLogin(error.message); }
    }, 2000);
  };
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function handle(message) {
  switch (message.type) {
    case "hello":
      state.teleopRateHz = message.teleop_rate_hz;
      state.leaseTtlS = message.lease_ttl_s;
      break;
    case "fleet":
      state.robots = message.robots;
      renderFleet();
      renderRobot(message.robot);
      renderLearner(message.learner);
      renderHistory(message.history);
      break;
    case "ack":
      if (message.request === "take_over") notice(`You hold ${message.robot_id}: drive with the keyboard.`);
      else if (message.request === "hand_back") notice(`Handed ${message.robot_id} back to its policy.`);
      else if (message.request === "label") notice(`Labelled episode ${message.episode_id} of ${message.robot_id}: ${message.outcome}.`);
      break;
    case "error":
      notice(message.error, true);
      break;
    default:
      break;
  }
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "just now";
  if (seconds < 120) return `${seconds.toFixed(0)} s ago`;
  return `${(seconds / 60).toFixed(0)} min ago`;
}

function percent(value) {
  return value === null || value === undefined ? "-" : `${(100 * value).toFixed(0)} %`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function renderFleet() {
  const body = $("fleet-table").querySelector("tbody");
  body.replaceChildren();
  for (const robot of state.robots) {
    const row = document.createElement("tr");
    row.dataset.robotId = robot.robot_id;
    if (robot.robot_id === state.selected) row.classList.add("selected");
    cell(row, robot.robot_id);
    const stateCell = cell(row, "");
    const badge = document.createElement("span");
    badge.className = `badge ${robot.state}`;
    badge.textContent = robot.state;
    stateCell.appendChild(badge);
    cell(row, robot.task || "-");
    cell(row, robot.instruction || "-");
    cell(row, robot.policy_version ? `v${robot.policy_version}` : "-");
    cell(row, String(robot.step));
    const recent = robot.recent;
    cell(row, recent ? `${percent(recent.autonomous_success)} of ${recent.episodes}` : "-", "autonomous-success");
    cell(row, recent ? percent(recent.intervention_rate) : "-", "intervention-rate");
    cell(row, robot.spool_depth === null || robot.spool_depth === undefined ? "-" : String(robot.spool_depth));
    cell(row, robot.loop_p99_ms === null || robot.loop_p99_ms === undefined ? "-" : `${robot.loop_p99_ms.toFixed(1)} ms`);
    cell(row, robot.held_by ? robot.held_by.operator : "-");
    cell(row, age(robot.last_telemetry_age_s));
    row.addEventListener("click", () => select(robot.robot_id));
    body.appendChild(row);
  }
  $("fleet-count").textContent = `(${state.robots.length})`;
  $("fleet-empty").hidden = state.robots.length > 0;
}

function select(robotId) {
  if (state.selected !== robotId) stopTeleop();
  state.selected = robotId;
  send({ type: "watch", robot_id: robotId });
  renderFleet();
  renderRobot(null);
}

function selectedRobot() {
  return state.robots.find((r) => r.robot_id === state.selected) || null;
}

function iHold(robot) {
  return !!(robot && robot.held_by && robot.held_by.operator === state.username);
}

function renderRobot(view) {
  const robot = selectedRobot();
  $("robot").hidden = !robot;
  if (!robot) { stopTeleop(); return; }
  $("robot-name").textContent = robot.robot_id;
  $("robot-state").textContent = robot.state;
  $("robot-state").className = `badge ${robot.state}`;
  $("robot-task").textContent = robot.task ? `${robot.task}: ${robot.instruction || ""}` : "No episode running.";
  const holder = robot.held_by;
  $("robot-holder").textContent = holder
    ? `Held by ${holder.operator} (lease ${holder.expires_in_s.toFixed(0)} s)` : "Not held: the policy drives.";
  const mine = iHold(robot);
  $("take-over").disabled = !canOperate() || !robot.connected || (holder && !mine) || mine;
  $("hand-back").disabled = !mine;
  const labelEpisode = robot.last_episode_id;
  $("label-episode").textContent = labelEpisode ? labelEpisode.slice(0, 40) : "(none yet)";
  $("label-success").disabled = !canOperate() || !labelEpisode || (holder && !mine);
  $("label-failure").disabled = $("label-success").disabled;
  $("teleop-help").hidden = !mine;
  if (mine) startTeleop(); else stopTeleop();
  if (view && view.robot_id === robot.robot_id) {
    const canvas = $("frame");
    if (view.frame) {
      const bytes = Uint8ClampedArray.from(atob(view.frame.rgba_base64), (c) => c.charCodeAt(0));
      canvas.width = view.frame.width;
      canvas.height = view.frame.height;
      canvas.getContext("2d").putImageData(new ImageData(bytes, view.frame.width, view.frame.height), 0, 0);
      canvas.hidden = false;
      $("no-frame").hidden = true;
    } else {
      canvas.hidden = true;
      $("no-frame").hidden = false;
    }
    $("state-vector").textContent = view.state_vector
      ? view.state_vector.map((v) => (v === null ? "nan" : v.toFixed(3))).join("  ") : "-";
    renderActionRow("action-proposed", "Policy proposed", view.policy_action);
    renderActionRow("action-executed", robot.intervening ? "Executed (operator)" : "Executed", view.action);
    $("action-step").textContent = view.step ? `at step ${view.step}` : "";
  }
}

// One row of the proposed-vs-executed table: the value and a bar (width |v|, colour by sign).
function renderActionRow(id, title, values) {
  const row = $(id);
  row.replaceChildren();
  const th = document.createElement("th");
  th.textContent = title;
  row.appendChild(th);
  for (const value of values || []) {
    const td = cell(row, value === null ? "nan" : value.toFixed(2));
    if (value !== null) {
      const bar = document.createElement("span");
      bar.className = value < 0 ? "bar negative" : "bar";
      bar.style.width = `${Math.min(1, Math.abs(value)) * 40}px`;
      td.appendChild(bar);
    }
  }
}

// Success and intervention rate of the fleet's episodes over time, on one canvas (both are shares, 0..1).
function renderHistory(history) {
  if (!history) return;
  const canvas = $("history-plot");
  const points = history.points || [];
  $("history-note").textContent = points.length
    ? `(${history.episodes} episodes, ${history.episodes_per_point} per point` +
      (history.unattributed ? `; ${history.unattributed} without operator records` : "") + ")"
    : "(no fleet episodes yet)";
  const ctx = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height, pad = 30;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#d5dbe1";
  ctx.fillStyle = "#66707a";
  ctx.font = "11px system-ui, sans-serif";
  for (const level of [0, 0.5, 1]) {
    const y = height - pad - level * (height - 2 * pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(width - 8, y); ctx.stroke();
    ctx.fillText(`${level * 100}%`, 0, y + 4);
  }
  if (points.length === 0) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const x = (t) => pad + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (width - pad - 8);
  const y = (v) => height - pad - v * (height - 2 * pad);
  ctx.fillText(new Date(t0 * 1000).toLocaleTimeString(), pad, height - 8);
  ctx.fillText(new Date(t1 * 1000).toLocaleTimeString(), width - 70, height - 8);
  for (const [key, colour] of [["autonomous_success", "#1e7b34"], ["intervention_rate", "#a05a00"]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((point, i) => {
      const value = point[key] === null ? 0 : point[key];
      if (i === 0) ctx.moveTo(x(point.t), y(value)); else ctx.lineTo(x(point.t), y(value));
    });
    ctx.stroke();
    ctx.lineWidth = 1;
  }
}

function renderLearner(learner) {
  if (!learner) return;
  $("learner-step").textContent = String(learner.step);
  $("learner-loss").textContent = learner.loss === null || learner.loss === undefined ? "-" : learner.loss.toFixed(4);
  $("learner-version").textContent = learner.latest_version ? `v${learner.latest_version}` : "-";
  const pin = learner.pin;
  $("fleet-version").textContent = !learner.fleet_version ? "-" : pin
    ? `v${learner.fleet_version}, pinned by ${pin.by}` +
      (pin.requested !== pin.version ? ` (v${pin.requested} rolled back as v${pin.version})` : "") +
      (pin.reason ? `: ${pin.reason}` : "")
    : `v${learner.fleet_version} (follows the newest)`;
  $("unpin").hidden = !(pin && state.role === "admin");
  $("learner-episodes").textContent = String(learner.replay_episodes);
  $("learner-trainer").textContent = learner.trainer_failure
    ? `stopped: ${learner.trainer_failure}` : (learner.trainer_running ? "training" : (learner.trainer_enabled ? "idle" : "off"));
  const metricNames = Object.keys(learner.metrics || {}).sort();
  $("metric-count").textContent = String(metricNames.length);
  const metricBody = $("learner-metrics").querySelector("tbody");
  metricBody.replaceChildren();
  for (const name of metricNames) {
    const row = document.createElement("tr");
    const value = learner.metrics[name];
    cell(row, name);
    cell(row, value === null ? "-" : Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(4));
    metricBody.appendChild(row);
  }
  const body = $("checkpoints").querySelector("tbody");
  body.replaceChildren();
  for (const record of learner.checkpoints.slice().reverse()) {
    const row = document.createElement("tr");
    cell(row, `v${record.version}`);
    cell(row, String(record.train_step));
    cell(row, record.loss === null ? "-" : record.loss.toFixed(4));
    cell(row, new Date(record.created_at * 1000).toLocaleTimeString());
    const fleetCell = cell(row, record.version === learner.fleet_version ? "running" : "", "admin-only");
    if (state.role === "admin" && record.version !== learner.fleet_version) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "pin";
      button.dataset.version = String(record.version);
      button.textContent = record.version < learner.fleet_version ? `Roll back to v${record.version}` : `Pin v${record.version}`;
      button.addEventListener("click", () => pinVersion(record.version));
      fleetCell.appendChild(button);
    }
    body.appendChild(row);
  }
}

async function pinVersion(version) {
  const reason = window.prompt(`Hold the fleet at v${version}: why? (kept in the log)`, "");
  if (reason === null) return;
  try {
    const pin = await api("POST", "/api/fleet/pin", { version, reason });
    notice(pin.version === version ? `Fleet pinned to v${version}.` : `Fleet rolled back to v${version} (published as v${pin.version}).`);
  } catch (error) {
    notice("Pin refused: " + error.message, true);
  }
}

async function unpin() {
  try {
    const answer = await api("DELETE", "/api/fleet/pin");
    notice(`Fleet unpinned: it follows the newest version (v${answer.fleet_version}).`);
  } catch (error) {
    notice("Unpin refused: " + error.message, true);
  }
}

// ---- teleop: keys held -> one action per control period while any is down -----------------------------

const GAMEPAD_DEADZONE = 0.15;

// The first connected gamepad (the browser's Gamepad API, standard mapping): left stick x/y, right stick
// vertical z (up is +z), button 0 toggles the gripper. Null when none is connected.
function gamepadAxes() {
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter((p) => p && p.connected) : [];
  const pad = pads[0];
  $("gamepad").textContent = pad ? pad.id.slice(0, 40) : "no gamepad";
  if (!pad) return null;
  const axis = (i) => {
    const v = pad.axes[i] || 0;
    return Math.abs(v) < GAMEPAD_DEADZONE ? 0 : Math.max(-1, Math.min(1, v));
  };
  const pressed = !!(pad.buttons[0] && pad.buttons[0].pressed);
  if (pressed && !state.gamepadGripperDown) {
    state.gripper = -state.gripper;
    state.gripperChanged = true;
    $("gripper").textContent = state.gripper > 0 ? "closed" : "open";
  }
  state.gamepadGripperDown = pressed;
  // Screen y points down on a stick: pushing forward (negative) is +y, pushing the right stick up is +z.
  return [axis(0), -axis(1), -axis(3)];
}

function teleopAction(dim, stick) {
  const speed = parseFloat($("speed").value) || 0.5;
  const action = new Array(dim).fill(0);
  for (const code of state.keys) {
    const move = MOVE_KEYS[code];
    if (move && move[0] < dim - 1) action[move[0]] += move[1] * speed;
  }
  if (stick) stick.forEach((v, i) => { if (i < dim - 1) action[i] += v * speed; });
  for (let i = 0; i < dim - 1; i += 1) action[i] = Math.max(-1, Math.min(1, action[i]));
  action[dim - 1] = state.gripper;
  return action;
}

function teleopTick() {
  const robot = selectedRobot();
  if (!iHold(robot)) { stopTeleop(); return; }
  const stick = gamepadAxes();
  const moving = [...state.keys].some((code) => code in MOVE_KEYS) || !!(stick && stick.some((v) => v !== 0));
  if (!moving && !state.wasMoving && !state.gripperChanged) return;
  state.wasMoving = moving;
  state.gripperChanged = false;
  if (send({ type: "teleop", robot_id: robot.robot_id, action: teleopAction(robot.action_dim || 4, stick) })) {
    state.teleopSent += 1;
    $("teleop-count").textContent = `${state.teleopSent} actions sent`;
  }
}

// While the page is shown, the held robot's lease is renewed even when nobody presses a key; a hidden or
// frozen page lets it lapse (console.lease_ttl_s) and the robot goes back to its policy.
function renewLease() {
  const robot = selectedRobot();
  if (iHold(robot) && document.visibilityState === "visible") send({ type: "renew", robot_id: robot.robot_id });
}

function startTeleop() {
  if (state.teleopTimer) return;
  state.teleopTimer = setInterval(teleopTick, 1000 / state.teleopRateHz);
  state.renewTimer = setInterval(renewLease, Math.max(250, (state.leaseTtlS * 1000) / 3));
}

function stopTeleop() {
  if (state.teleopTimer) { clearInterval(state.teleopTimer); state.teleopTimer = null; }
  if (state.renewTimer) { clearInterval(state.renewTimer); state.renewTimer = null; }
  state.keys.clear();
  state.wasMoving = false;
}

function typingInField(event) {
  const tag = event.target && event.target.tagName;
  return tag === "INPUT" && event.target.type !== "range";
}

document.addEventListener("keydown", (event) => {
  if (!state.teleopTimer || typingInField(event)) return;
  if (event.code === "Space") {
    if (!event.repeat) {
      state.gripper = -state.gripper;
      state.gripperChanged = true;
      $("gripper").textContent = state.gripper > 0 ? "closed" : "open";
    }
    event.preventDefault();
  } else if (event.code in MOVE_KEYS) {
    state.keys.add(event.code);
    event.preventDefault();
  }
});
document.addEventListener("keyup", (event) => { state.keys.delete(event.code); });
window.addEventListener("blur", () => state.keys.clear()); // a key released elsewhere must not stick

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("unpin").addEventListener("click", unpin);
  $("take-over").addEventListener("click", () => send({ type: "take_over", robot_id: state.selected, reason: "console" }));
  $("hand-back").addEventListener("click", () => send({ type: "hand_back", robot_id: state.selected }));
  $("label-success").addEventListener("click", () => send({ type: "label", robot_id: state.selected, outcome: "success" }));
  $("label-failure").addEventListener("click", () => send({ type: "label", robot_id: state.selected, outcome: "failure" }));
  try {
    showConsole(await api("GET", "/api/session"));
  } catch (error) {
    showLogin(error.status === 401 && error.message.startsWith("session expired") ? error.message : "");
  }
});
