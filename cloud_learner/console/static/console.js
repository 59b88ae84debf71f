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
  }
}

function renderLearner(learner) {
  if (!learner) return;
  $("learner-step").textContent = String(learner.step);
  $("learner-loss").textContent = learner.loss === null || learner.loss === undefined ? "-" : learner.loss.toFixed(4);
  $("learner-version").textContent = learner.latest_version ? `v${learner.latest_version}` : "-";
  $("learner-episodes").textContent = String(learner.replay_episodes);
  $("learner-trainer").textContent = learner.trainer_failure
    ? `stopped: ${learner.trainer_failure}` : (learner.trainer_running ? "training" : (learner.trainer_enabled ? "idle" : "off"));
  const body = $("checkpoints").querySelector("tbody");
  body.replaceChildren();
  for (const record of learner.checkpoints.slice().reverse()) {
    const row = document.createElement("tr");
    cell(row, `v${record.version}`);
    cell(row, String(record.train_step));
    cell(row, record.loss === null ? "-" : record.loss.toFixed(4));
    cell(row, new Date(record.created_at * 1000).toLocaleTimeString());
    body.appendChild(row);
  }
}

// ---- teleop: keys held -> one action per control period while any is down -----------------------------

function teleopAction(dim) {
  const speed = parseFloat($("speed").value) || 0.5;
  const action = new Array(dim).fill(0);
  for (const code of state.keys) {
    const move = MOVE_KEYS[code];
    if (move && move[0] < dim - 1) action[move[0]] += move[1] * speed;
  }
  action[dim - 1] = state.gripper;
  return action;
}

function teleopTick() {
  const robot = selectedRobot();
  if (!iHold(robot)) { stopTeleop(); return; }
  const moving = [...state.keys].some((code) => code in MOVE_KEYS);
  if (!moving && !state.wasMoving && !state.gripperChanged) return;
  state.wasMoving = moving;
  state.gripperChanged = false;
  if (send({ type: "teleop", robot_id: robot.robot_id, action: teleopAction(robot.action_dim || 4) })) {
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
