"""The operator console in a real browser: Debian's chromium, headless, driven by Playwright.

A real learner with its console, two robots' operator sessions over real gRPC; the test logs in through the
page, sees both robots, takes over one, drives it with key presses, labels the episode, hands back, and
checks at the robot's session that the commands arrived (and none at the other robot). The second test puts
two real robot daemons (Meta-World robots in MuJoCo) behind the console, drives one from the keyboard and a
gamepad, and checks at the learner that the uploaded episode has those frames as interventions attributed
to the operator. Screenshots land in the test's tmp dir. Skipped, saying why, only where no chromium binary
exists (scripts/setup.sh installs it with apt-get).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from learner_fixtures import RunningLearner, make_checkpoint_blob, start_robot_daemon, wait_for
from test_console import PASSWORD, USERS, FakeRobot, add_accounts

from benchmarks.console import chromium_executable
from cloud_learner.config import ConsoleConfig
from sop.episode import ACTION, INTERVENTION, Outcome, operator_frames

StartLearner = Callable[..., RunningLearner]


CHROMIUM = chromium_executable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium binary (apt-get install chromium, or run scripts/setup.sh as root)",
    ),
]


@pytest.fixture
def console_with_two_robots(
    start_learner: StartLearner, tmp_path: Path
) -> Iterator[tuple[RunningLearner, dict[str, FakeRobot]]]:
    add_accounts(tmp_path / "run", USERS)
    learner = start_learner(console=ConsoleConfig(address="127.0.0.1:0", teleop_rate_hz=30.0))
    robots = {robot_id: FakeRobot(learner, robot_id) for robot_id in ("robot-1", "robot-2")}
    wait_for(lambda: learner.service.relay.connected_robots() == ["robot-1", "robot-2"])
    yield learner, robots
    for robot in robots.values():
        robot.close()


def test_an_operator_logs_in_takes_over_drives_labels_and_hands_back_in_chromium(
    console_with_two_robots: tuple[RunningLearner, dict[str, FakeRobot]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    learner, robots = console_with_two_robots
    assert learner.service.console is not None
    url = learner.service.console.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(url)

            page.fill("#login-username", "alice")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text("alice")
            expect(page.locator("#link-state")).to_have_text("live")
            for robot_id in ("robot-1", "robot-2"):
                expect(page.locator(f'tr[data-robot-id="{robot_id}"]')).to_contain_text("reach-v3")

            page.click('tr[data-robot-id="robot-1"]')
            expect(page.locator("#robot-name")).to_have_text("robot-1")
            expect(page.locator("#frame")).to_be_visible()  # the camera frame came through
            page.click("#take-over")
            expect(page.locator("#robot-holder")).to_contain_text("Held by alice")
            expect(page.locator('tr[data-robot-id="robot-1"]')).to_contain_text("intervened")
            wait_for(lambda: robots["robot-1"].kinds()[:1] == ["take_over"])

            started = time.monotonic()
            page.keyboard.down("d")  # +x
            page.wait_for_timeout(400)
            page.keyboard.up("d")
            page.keyboard.press(" ")  # gripper closes
            page.keyboard.down("w")  # +y
            page.wait_for_timeout(300)
            page.keyboard.up("w")
            wait_for(lambda: any(a[1] > 0 and a[3] > 0 for a in robots["robot-1"].teleop_actions()))
            elapsed = time.monotonic() - started
            actions = robots["robot-1"].teleop_actions()
            assert any(a[0] > 0 and a[3] < 0 for a in actions), actions  # D with the gripper open
            assert all(a.shape == (4,) and np.all(np.abs(a) <= 1) for a in actions)
            assert len(actions) <= 30 * elapsed + 8, (len(actions), elapsed)  # the control rate, not faster
            wait_for(lambda: np.allclose(robots["robot-1"].teleop_actions()[-1][:3], 0))  # keys up: stop

            page.click("#label-success")
            expect(page.locator("#notice")).to_contain_text("success")
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'console.png'}")
            page.click("#hand-back")
            expect(page.locator("#robot-holder")).to_contain_text("Not held")
            expect(page.locator("#take-over")).to_be_enabled()
        finally:
            browser.close()

    wait_for(lambda: robots["robot-1"].kinds()[-1] == "hand_back")
    kinds = robots["robot-1"].kinds()
    assert kinds[0] == "take_over" and kinds[-2:] == ["outcome_label", "hand_back"]
    assert set(kinds[1:-2]) == {"teleop_action"}
    assert {c.operator_id for c in robots["robot-1"].commands} == {"alice"}
    assert robots["robot-1"].commands[-2].outcome_label.episode_id == "episode-of-robot-1"
    assert robots["robot-2"].kinds() == []
    assert (tmp_path / "console.png").stat().st_size > 10_000
    # The page asks /api/session before the login (401: show the login form); nothing else may fail.
    assert [e for e in console_errors if "401" not in e] == [], console_errors


# A gamepad the page finds through `navigator.getGamepads()`; the test moves its sticks and buttons.
FAKE_GAMEPAD = """
window.__pad = { id: "test pad (standard)", connected: true, index: 0, mapping: "standard",
  axes: [0, 0, 0, 0], buttons: Array.from({ length: 16 }, () => ({ pressed: false, value: 0 })) };
navigator.getGamepads = () => [window.__pad];
"""


def test_an_operator_drives_a_real_robot_daemon_and_the_learner_records_whose_frames_they_are(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    add_accounts(tmp_path / "run", USERS)
    learner = start_learner(console=ConsoleConfig(address="127.0.0.1:0", teleop_rate_hz=30.0))
    assert learner.service.console is not None
    daemons = {
        robot_id: start_robot_daemon(learner, robot_id, tmp_path) for robot_id in ("robot-1", "robot-2")
    }
    try:
        wait_for(lambda: learner.service.relay.connected_robots() == ["robot-1", "robot-2"], timeout=30)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1100})
                page.add_init_script(FAKE_GAMEPAD)
                page.goto(learner.service.console.url)
                page.fill("#login-username", "alice")
                page.fill("#login-password", PASSWORD)
                page.click("#login-form button[type=submit]")
                for robot_id in ("robot-1", "robot-2"):
                    expect(page.locator(f'tr[data-robot-id="{robot_id}"]')).to_contain_text("running")
                page.click('tr[data-robot-id="robot-1"]')
                expect(page.locator("#action-proposed")).to_contain_text("0.01")  # the policy's proposal
                page.click("#take-over")
                expect(page.locator("#robot-holder")).to_contain_text("Held by alice")
                expect(page.locator("#gamepad")).to_contain_text("test pad")
                page.keyboard.down("d")  # +x from the keyboard
                page.wait_for_timeout(500)
                page.keyboard.up("d")
                page.evaluate("window.__pad.axes[1] = -0.9")  # left stick forward: +y from the gamepad
                page.wait_for_timeout(500)
                page.evaluate("window.__pad.axes[1] = 0")
                expect(page.locator("#action-executed")).to_contain_text("Executed (operator)")
                page.wait_for_timeout(300)
                page.click("#label-success")  # ends the running episode with the operator's verdict
                expect(page.locator("#notice")).to_contain_text("success")
                page.click("#hand-back")
                expect(page.locator("#robot-holder")).to_contain_text("Not held")
                page.screenshot(path=str(tmp_path / "console-robots.png"), full_page=True)
                print(f"screenshot: {tmp_path / 'console-robots.png'}")
            finally:
                browser.close()
        wait_for(
            lambda: any(
                info.robot_id == "robot-1" and info.outcome is Outcome.SUCCESS
                for info in learner.service.store.list()
            ),
            timeout=30,
        )
    finally:
        for daemon in daemons.values():
            daemon.stop()

    store = learner.service.store
    (labelled,) = [
        store.get(info.episode_id)
        for info in store.list()
        if info.robot_id == "robot-1" and info.outcome is Outcome.SUCCESS
    ]
    flags = labelled.steps[INTERVENTION]
    ranges = operator_frames(labelled.extra, labelled.num_steps, flags)
    assert set(ranges) == {"alice"} and flags.sum() == sum(b - a for a, b in ranges["alice"])
    driven = labelled.steps[ACTION][flags]
    assert (driven[:, 0] > 0.2).any(), "the keyboard's +x never reached the robot"
    assert (driven[:, 1] > 0.2).any(), "the gamepad's +y never reached the robot"
    assert np.allclose(labelled.steps[ACTION][~flags], 0.01)  # the policy's own frames


def test_an_admin_rolls_the_fleet_back_and_unpins_it_in_chromium(
    console_with_two_robots: tuple[RunningLearner, dict[str, FakeRobot]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    learner, _ = console_with_two_robots
    assert learner.service.console is not None
    publisher = learner.service.publisher
    for _ in range(3):
        publisher.publish_next(lambda number: make_checkpoint_blob(number, number - 1, seed=number))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("dialog", lambda dialog: dialog.accept("v2 and v3 drop the cup"))
            page.goto(learner.service.console.url)
            page.fill("#login-username", "root")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#fleet-version")).to_have_text("v3 (follows the newest)")
            page.click('button.pin[data-version="1"]')
            expect(page.locator("#notice")).to_contain_text("rolled back to v1 (published as v4)")
            expect(page.locator("#fleet-version")).to_contain_text(
                "v4, pinned by root (v1 rolled back as v4): v2 and v3 drop the cup"
            )
            page.screenshot(path=str(tmp_path / "console-pin.png"), full_page=True)
            page.click("#unpin")
            expect(page.locator("#fleet-version")).to_have_text("v4 (follows the newest)")
        finally:
            browser.close()
    assert publisher.pin_state is None and publisher.fleet_version is not None
    assert publisher.fleet_version.version == 4
