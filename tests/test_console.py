"""The web console in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (no browser is downloaded), against a real `headrace up`.

Signs in, uploads a file and sees its IN_CLOSE_WRITE arrive in the events view, deploys a function from the
page and sees its activation and logs, redrives a dead letter, shares a link and opens it in a fresh browser,
pages through a 10,000-entry directory, and checks a second, non-admin user sees none of the first one's
private files or actions. With an OIDC provider (support/oidc_provider.py) whose console client the issuers
file names, signs in at the provider's login form (authorization code flow with PKCE) as a non-admin user
and out again; without one, offers no such button. The SQLite run saves a screenshot of each view to
docs/console/ (docs/console.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from support.harness import ADMIN_KEY, Server, add_user, client, db_kind, http, wait_for
from support.oidc_provider import OidcProvider

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (make test-deps)"
    ),
    pytest.mark.filterwarnings("ignore:Please `KeySet"),  # Authlib's JWT generator in the test provider
]
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
#: The console's first load (page, styles, scripts, the sign-in's and the files view's API calls) in bytes.
FIRST_LOAD_BUDGET = 300 * 1024
T = TypeVar("T")


def browser(width: int = 1280, height: int = 900) -> WebDriver:
    """A fresh headless Chromium: its own profile, so nothing of another context (storage, cache)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.add_argument("--disable-gpu")
    drv = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    drv.set_script_timeout(30)
    return drv


def until(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """`wait_for` that treats an element replaced under the probe (the page re-rendered), or not there yet
    (`find` gave None), as not yet."""

    def guarded() -> T | None:
        try:
            return probe()
        except (StaleElementReferenceException, WebDriverException) as exc:
            if "no such window" in str(exc):
                raise
            return None
        except AttributeError:
            return None

    return wait_for(guarded, what, timeout)


def find(drv: WebDriver, css: str) -> Any:
    found = drv.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def shown(drv: WebDriver, css: str, what: str = "", timeout: float = 60.0) -> Any:
    return until(lambda: (e := find(drv, css)) is not None and e.is_displayed() and e, what or css, timeout)


def click(drv: WebDriver, css: str, what: str = "") -> None:
    """Click what `css` finds, again if the page re-rendered it under the click."""

    def attempt() -> bool:
        e = find(drv, css)
        if e is None or not e.is_displayed() or not e.is_enabled():
            return False
        e.click()
        return True

    until(attempt, what or f"a click on {css}")


def error_text(drv: WebDriver) -> str:
    box = find(drv, "#error")
    return box.text if box is not None and box.is_displayed() else ""


def shot(drv: WebDriver, name: str) -> None:
    """docs/console/NAME.png, from the SQLite run only (the two databases' runs go side by side)."""
    if db_kind() == "sqlite":
        SHOTS.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(drv: WebDriver, server: Server, user: str, key: str, hash_: str = "") -> None:
    """With the keyboard: the user name, Tab, the key, Enter."""
    drv.get(f"{server.api_url}/console/{hash_}")
    field = shown(drv, "#signin-user")
    field.send_keys(user, Keys.TAB)
    active = drv.switch_to.active_element
    assert active.get_attribute("id") == "signin-key"
    active.send_keys(key, Keys.ENTER)
    until(lambda: (w := find(drv, "#whoami")) is not None and w.text.startswith(user), f"{user} signed in")


def go(drv: WebDriver, hash_: str) -> None:
    drv.execute_script("location.hash = arguments[0]", hash_)


def set_code(drv: WebDriver, code: str) -> None:
    drv.execute_script(
        "const a = document.getElementById('action-code'); a.value = arguments[0];a.dispatchEvent(new Event('input'));",
        code,
    )


def put(server: Server, path: str, data: bytes, auth: tuple[str, str] | None = None) -> None:
    r = http("PUT", f"{server.door_url}{path}", content=data, auth=auth or server.auth)
    assert r.status_code in (201, 204), r.text


def ns_post(server: Server, path: str, body: dict[str, Any], auth: tuple[str, str] | None = None) -> None:
    r = http("POST", f"{server.api_url}/api/v1/namespace{path}", json=body, auth=auth or server.auth)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def drv() -> Iterator[WebDriver]:
    d = browser()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def signed_in(drv: WebDriver, server: Server) -> WebDriver:
    sign_in(drv, server, "admin", ADMIN_KEY)
    return drv


def test_first_load_is_small_and_opens_on_the_files_of_root(server: Server) -> None:
    ns_post(server, "/", {"action": "mkdir", "name": "raw"})
    put(server, "/raw/run-0001.h5", b"x" * 4096)
    put(server, "/README.txt", b"hello console\n")
    d = browser()
    try:
        d.get(f"{server.api_url}/console/")
        shown(d, "#signin-user")
        shot(d, "signin")
        sign_in(d, server, "admin", ADMIN_KEY)
        shown(d, "#files-table tr[data-name='raw']", "the root's entries")
        total = d.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return [n.transferSize, ...performance.getEntriesByType('resource').map(r => r.transferSize)];"
        )
        assert all(isinstance(t, int) for t in total) and len(total) >= 6
        transferred = sum(total)
        print(f"console first load: {transferred} bytes transferred in {len(total)} requests")
        assert 10_000 < transferred < FIRST_LOAD_BUDGET
        assert find(d, "#nav a[aria-current='page']").text == "Files"
        row = find(d, "#files-table tr[data-name='README.txt']").text
        assert "14 B" in row and "-rw" in row
        shot(d, "files")
        # on a phone: nothing wider than the screen
        d.set_window_size(390, 844)
        shown(d, "#files-table")
        assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        shot(d, "files-phone")
    finally:
        d.quit()


def test_an_upload_in_one_tab_arrives_in_the_events_view_of_another(
    signed_in: WebDriver, server: Server, tmp_path: Path
) -> None:
    drv = signed_in
    top = f"/upl-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": top[1:]})
    events_tab = drv.current_window_handle
    go(drv, f"#/events?path={top}")
    until(lambda: "watching" in find(drv, "#events-status").text, "the events view watching")

    drv.switch_to.new_window("tab")
    sign_in(drv, server, "admin", ADMIN_KEY, f"#/files{top}")
    shown(drv, "#files-table", "the empty directory")
    local = tmp_path / "frame 1.h5"
    local.write_bytes(b"\x89HDF" + b"0" * 5000)
    drv.find_element(By.ID, "upload-input").send_keys(str(local))
    shown(drv, "#files-table tr[data-name='frame 1.h5']", "the uploaded file listed")
    assert "4.9 KiB" in find(drv, "#files-table tr[data-name='frame 1.h5']").text
    assert error_text(drv) == ""
    got = http("GET", f"{server.door_url}{top}/frame%201.h5", auth=server.auth)
    assert got.status_code == 200 and got.content.startswith(b"\x89HDF") and len(got.content) == 5004
    upload_tab = drv.current_window_handle

    drv.switch_to.window(events_tab)
    row = shown(drv, "#events-body tr[data-mask~='IN_CLOSE_WRITE']", "IN_CLOSE_WRITE in the events view")
    assert f"{top}/frame 1.h5" in row.text
    # pause: an event arriving meanwhile is held, then shown on resume
    click(drv, "#events-pause")
    put(server, f"{top}/second.txt", b"2")
    try:
        until(lambda: "new" in find(drv, "#events-pause").text, "the paused view counting a held event", 15)
    except AssertionError:
        print("DEBUG", find(drv, "#main").text, drv.get_log("browser") if hasattr(drv, "get_log") else "")
        raise
    assert "second.txt" not in find(drv, "#events-body").text
    click(drv, "#events-pause")
    until(lambda: "second.txt" in find(drv, "#events-body").text, "the held event shown on resume")
    # filtered by flag: only CLOSE_WRITE
    for label in drv.find_elements(By.CSS_SELECTOR, ".flags input"):
        if label.is_selected() != (label.get_attribute("value") == "IN_CLOSE_WRITE"):
            label.click()
    masks = {r.get_attribute("data-mask") for r in drv.find_elements(By.CSS_SELECTOR, "#events-body tr")}
    assert masks and all("IN_CLOSE_WRITE" in m for m in masks)
    shot(drv, "events")

    drv.switch_to.window(upload_tab)
    drv.close()
    drv.switch_to.window(events_tab)


def test_files_view_makes_folders_renames_labels_and_deletes(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    top = f"/ops-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": top[1:]})
    put(server, f"{top}/a.txt", b"abc")
    go(drv, f"#/files{top}")
    shown(drv, "#files-table tr[data-name='a.txt']")

    def answer_prompt(value: str) -> None:
        field = shown(drv, "dialog[open] input")
        field.clear()
        field.send_keys(value, Keys.ENTER)

    click(drv, "#mkdir")
    answer_prompt("sub")
    shown(drv, "#files-table tr[data-name='sub']", "the new folder")
    click(drv, "button[aria-label='Rename a.txt']")
    answer_prompt("b.txt")
    shown(drv, "#files-table tr[data-name='b.txt']", "the renamed file")
    assert find(drv, "#files-table tr[data-name='a.txt']") is None

    click(drv, "button[aria-label='Details of b.txt']")
    shown(drv, "#label-input").send_keys("calibrated")
    click(drv, "#label-add")
    until(lambda: "calibrated" in find(drv, "dialog[open] .chips").text, "the label added")
    drv.find_element(By.ID, "xattr-key").send_keys("sample")
    drv.find_element(By.ID, "xattr-value").send_keys("lysozyme")
    click(drv, "#xattr-add")
    until(lambda: "lysozyme" in find(drv, "dialog[open] .xattrs").text, "the xattr set")
    assert "ADLER32" in find(drv, "dialog[open] dl").text
    shot(drv, "file-details")
    click(drv, "dialog[open] .buttons button")
    stat = http("GET", f"{server.api_url}/api/v1/namespace{top}/b.txt?labels=true&xattr=true", auth=server.auth).json()
    assert stat["labels"] == ["calibrated"] and stat["extendedAttributes"] == {"sample": "lysozyme"}

    click(drv, "button[aria-label='Delete b.txt']")
    click(drv, "dialog[open] button.danger")
    until(lambda: find(drv, "#files-table tr[data-name='b.txt']") is None, "the file gone")
    assert http("GET", f"{server.api_url}/api/v1/namespace{top}/b.txt", auth=server.auth).status_code == 404


DEPLOYED = """import json

def main(event, ctx):
    ctx.logger.warning("processing %s", event.get("path"))
    return {"seen": event.get("path"), "size": event.get("size")}
"""


def deploy_from_page(drv: WebDriver, name: str, code: str, watch: str, retries: int | None = None) -> None:
    go(drv, "#/functions/new")
    shown(drv, "#action-name").send_keys(name)
    set_code(drv, code)
    if retries is not None:
        field = drv.find_element(By.ID, "action-retries")
        field.clear()
        field.send_keys(str(retries))
    click(drv, "#trigger-on")
    path = drv.find_element(By.ID, "trigger-path")
    path.clear()
    path.send_keys(watch)
    click(drv, "#action-save")
    until(lambda: drv.execute_script("return location.hash") == f"#/functions/actions/{name}", "the deployed action")
    shown(drv, "#invoke")
    assert error_text(drv) == ""


def test_a_function_deployed_from_the_page_runs_on_an_upload(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    name = f"thumbs{uuid.uuid4().hex[:4]}"
    watch = f"/fn-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": watch[1:]})
    deploy_from_page(drv, name, DEPLOYED, watch)
    assert find(drv, "#action-code").get_attribute("value") == DEPLOYED
    assert find(drv, ".code-view .tok-kw") is not None  # highlighted
    shot(drv, "function-editor")
    trig = http("GET", f"{server.api_url}/api/v1/namespaces/_/triggers/{name}-trigger", auth=server.auth).json()
    assert trig["feedParameters"]["path"] == watch and trig["feedParameters"]["flags"] == ["IN_CLOSE_WRITE"]

    # invoke with JSON input from the page
    box = drv.find_element(By.ID, "invoke-input")
    box.clear()
    box.send_keys('{"path": "/by/hand"}')
    click(drv, "#invoke")
    until(lambda: "success" in find(drv, "#invoke-result").text, "the invoke's result")
    assert "/by/hand" in find(drv, "#invoke-result").text

    put(server, f"{watch}/run-7.h5", b"z" * 77)
    go(drv, f"#/functions/activations?name={name}")
    row = shown(drv, "#activations-table tr[data-status='success'][data-name]", "a successful activation", 90)
    until(
        lambda: (
            any(
                r.get_attribute("data-status") == "success"
                for r in drv.find_elements(By.CSS_SELECTOR, "#activations-table tbody tr")
            )
            and len(drv.find_elements(By.CSS_SELECTOR, "#activations-table tbody tr")) >= 2
        ),
        "both activations listed",
        90,
    )
    shot(drv, "activations")
    records = http(
        "GET", f"{server.api_url}/api/v1/namespaces/_/activations?name={name}&docs=true", auth=server.auth
    ).json()
    fired = next(a for a in records if "eventOffset" in a)
    go(drv, f"#/functions/activations/{fired['activationId']}")
    until(lambda: "processing" in find(drv, "#activation-logs").text, "the activation's logs")
    assert f"{watch}/run-7.h5" in find(drv, "#activation-logs").text
    cause = shown(drv, "#cause-file", "the cause linked to its file")
    assert cause.text.endswith(f"{watch}/run-7.h5") and "IN_CLOSE_WRITE" in cause.text
    assert '"size": 77' in find(drv, "#activation-result").text
    shot(drv, "activation")
    cause.click()
    shown(drv, "#file-info", "the file the event named")
    assert "77 B" in find(drv, "#file-info").text
    del row


FAILING = """def main(event, ctx):
    raise RuntimeError("calibration missing for " + event["path"])
"""
FIXED = """def main(event, ctx):
    return {"calibrated": event["path"]}
"""


def test_a_dead_letter_is_redriven_from_the_page(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    name = f"calib{uuid.uuid4().hex[:4]}"
    watch = f"/dl-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": watch[1:]})
    deploy_from_page(drv, name, FAILING, watch, retries=0)
    put(server, f"{watch}/frame.h5", b"f")

    def dead() -> list[dict[str, Any]]:
        return http("GET", f"{server.api_url}/api/v1/namespaces/_/deadletters?name={name}", auth=server.auth).json()

    letter = wait_for(lambda: dead(), "the dead letter", 90)[0]
    go(drv, "#/functions/deadletters")
    row = shown(drv, f"#deadletters-table tr[data-id='{letter['activationId']}']", "the dead letter listed")
    assert "calibration missing" in row.text and f"{watch}/frame.h5" in row.text
    shot(drv, "deadletters")

    # fix the code in the page, then redrive that one letter
    go(drv, f"#/functions/actions/{name}")
    until(lambda: "raise" in (find(drv, "#action-code").get_attribute("value") or ""), "the editor with the code")
    set_code(drv, FIXED)
    click(drv, "#action-save")
    until(lambda: "Deployed" in (find(drv, "#notice").text or ""), "the saved action")
    go(drv, "#/functions/deadletters")
    click(drv, f"#deadletters-table input[value='{letter['activationId']}']")
    click(drv, "#redrive-selected")
    until(lambda: "Redriven: 1" in find(drv, "#notice").text, "the redrive's answer")

    def record() -> dict[str, Any] | None:
        a = http(
            "GET", f"{server.api_url}/api/v1/namespaces/_/activations/{letter['activationId']}", auth=server.auth
        ).json()
        return a if a.get("state") == "done" else None

    done = wait_for(record, "the redriven activation done", 90)
    assert done["response"]["success"] is True, done
    assert done["response"]["result"] == {"calibrated": f"{watch}/frame.h5"}
    assert dead() == []


def test_a_shared_link_opens_in_a_fresh_browser(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    top = f"/share-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": top[1:]})
    ns_post(server, top, {"action": "chmod", "mode": 0o700})
    put(server, f"{top}/result.csv", b"a,b\n1,2\n")
    put(server, f"{top}/other.csv", b"secret\n")
    go(drv, f"#/files{top}")
    click(drv, "button[aria-label='Share result.csv']")
    validity = shown(drv, "#share-validity")
    validity.send_keys("1 day")
    click(drv, "dialog[open] button.primary")
    link = shown(drv, "#share-link").get_attribute("value")
    assert link.startswith(f"{server.api_url}/console/?authz=") and link.endswith(f"#/files{top}/result.csv")
    assert find(drv, "#share-qr svg") is not None
    shot(drv, "share")
    click(drv, "dialog[open] .buttons button")

    fresh = browser()
    try:
        fresh.get(link)
        info = shown(fresh, "#file-info", "the shared file in a fresh browser")
        assert f"{top}/result.csv" in info.text and "8 B" in info.text
        assert "(token)" in fresh.find_element(By.ID, "whoami").text
        assert "authz" not in fresh.current_url  # the token leaves the address bar
        # the page downloads it through the door with the token (CORS), as the Download button's link does
        body = fresh.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "import('/console/js/api.js').then(async (api) => {"
            "  const r = await fetch((await api.door()) + arguments[0] + '?authz=' + api.auth.get().token);"
            "  done([r.status, await r.text()]); }).catch((e) => done([0, String(e)]));",
            f"{top}/result.csv",
        )
        assert body == [200, "a,b\n1,2\n"]
        shot(fresh, "shared-link")
        # the token reaches nothing else: the folder lists only the shared file (as dCache's path caveats do),
        # and the other file is refused, in the API's words
        go(fresh, f"#/files{top}")
        shown(fresh, "#files-table tr[data-name='result.csv']", "the shared file in its folder")
        assert find(fresh, "#files-table tr[data-name='other.csv']") is None
        go(fresh, f"#/files{top}/other.csv")
        until(lambda: "does not allow" in error_text(fresh), "the refusal of the other file")
        assert "other.csv" not in fresh.find_element(By.ID, "main").text.replace(f"{top}/other.csv", "")
    finally:
        fresh.quit()


def test_a_second_user_sees_none_of_the_first_users_private_files_or_actions(
    signed_in: WebDriver, server: Server
) -> None:
    top = f"/private-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": top[1:]})
    ns_post(server, top, {"action": "chmod", "mode": 0o700})
    put(server, f"{top}/secret.txt", b"s")
    admin_action = f"adminonly{uuid.uuid4().hex[:4]}"
    r = http(
        "PUT",
        f"{server.api_url}/api/v1/namespaces/_/actions/{admin_action}",
        auth=server.auth,
        json={"exec": {"kind": "python:3", "code": FIXED}},
    )
    assert r.status_code == 200
    name, key, uid = add_user(server, f"bob{uuid.uuid4().hex[:4]}")
    home = f"/home-{name}"
    ns_post(server, "/", {"action": "mkdir", "name": home[1:]})
    ns_post(server, home, {"action": "chown", "uid": uid})
    put(server, f"{home}/mine.txt", b"bob's", auth=(name, key))

    bob = browser()
    try:
        sign_in(bob, server, name, key, f"#/files{home}")
        shown(bob, "#files-table tr[data-name='mine.txt']", "bob's own file")
        go(bob, f"#/files{top}")
        until(lambda: error_text(bob) != "", "the refusal of the private directory")
        assert "secret.txt" not in bob.find_element(By.ID, "main").text
        assert find(bob, "#files-table") is None
        refusal = error_text(bob)
        assert "denied" in refusal.lower() or "permission" in refusal.lower(), refusal
        shot(bob, "second-user-refused")
        go(bob, "#/functions/actions")
        until(lambda: "No actions yet." in bob.find_element(By.ID, "main").text, "bob's empty action list")
        go(bob, "#/scaling")
        shown(bob, "#scaling-table")
        until(lambda: bob.find_element(By.ID, "scaling-body").get_attribute("childElementCount") == "0", "no rows")
        assert admin_action not in bob.find_element(By.ID, "main").text
        # signing out forgets the credentials
        click(bob, "#signout")
        shown(bob, "#signin-user")
        assert bob.execute_script("return sessionStorage.length") == 0
    finally:
        bob.quit()


def test_scaling_view_charts_the_callers_actions(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    name = f"burst{uuid.uuid4().hex[:4]}"
    r = http(
        "PUT",
        f"{server.api_url}/api/v1/namespaces/_/actions/{name}",
        auth=server.auth,
        json={"exec": {"kind": "python:3", "code": "import time\ndef main(a):\n    time.sleep(0.2)\n    return {}\n"}},
    )
    assert r.status_code == 200
    go(drv, "#/scaling")
    shown(drv, "#scaling-table")

    def samples() -> int:
        return int(find(drv, "#view-scaling").get_attribute("data-samples") or 0)

    for _ in range(20):
        http("POST", f"{server.api_url}/api/v1/namespaces/_/actions/{name}", auth=server.auth, json={})
    until(lambda: find(drv, f"#scaling-body tr[data-name='{name}']"), "the action in the scaling table", 60)
    until(
        lambda: float(find(drv, f"#scaling-body tr[data-name='{name}'] td:last-child").text) > 0,
        "activations per second above zero",
        90,
    )
    # a second burst a few samples later, so the charts draw lines
    seen = samples()
    until(lambda: samples() >= seen + 2, "two more samples")
    for _ in range(20):
        http("POST", f"{server.api_url}/api/v1/namespaces/_/actions/{name}", auth=server.auth, json={})
    seen = samples()
    until(lambda: samples() >= seen + 2, "two more samples")
    label = find(drv, "#chart-rate").get_attribute("aria-label")
    assert name in label
    shot(drv, "scaling")


def test_a_directory_of_10000_entries_is_paged(signed_in: WebDriver, server: Server) -> None:
    drv = signed_in
    top = f"/big-{uuid.uuid4().hex[:6]}"
    ns_post(server, "/", {"action": "mkdir", "name": top[1:]})
    started = time.monotonic()

    def make(chunk: range) -> None:
        with client(base_url=server.api_url, auth=server.auth, timeout=60) as c:
            for i in chunk:
                r = c.post(f"/api/v1/namespace{top}", json={"action": "mkdir", "name": f"d{i:05d}"})
                assert r.status_code == 200, r.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, [range(k, 10_000, 8) for k in range(8)]))
    print(f"10,000 entries made in {time.monotonic() - started:.1f} s")

    t0 = time.monotonic()
    go(drv, f"#/files{top}")
    until(lambda: len(drv.find_elements(By.CSS_SELECTOR, "#files-table tbody tr")) == 200, "the first page")
    first = time.monotonic() - t0
    assert find(drv, "#page-info").text == "entries 1\u2013200"
    assert find(drv, "#files-table tbody tr").get_attribute("data-name") == "d00000"
    t1 = time.monotonic()
    click(drv, "#page-next")
    until(lambda: find(drv, "#page-info").text == "entries 201\u2013400", "the second page")
    second = time.monotonic() - t1
    assert find(drv, "#files-table tbody tr").get_attribute("data-name") == "d00200"
    # the page stays responsive: a script runs at once, and the DOM holds one page, not 10,000 rows
    t2 = time.monotonic()
    assert drv.execute_script("return document.querySelectorAll('tr').length") < 300
    script = time.monotonic() - t2
    print(f"10,000-entry directory: first page in {first:.2f} s, next page in {second:.2f} s, script {script:.3f} s")
    assert first < 20 and second < 20
    shot(drv, "files-big")
    assert json.dumps(error_text(drv)) == '""'


# -- signing in with an OIDC provider ----------------------------------------------------------------------


class Oidc:
    """A server trusting a real OIDC provider whose public client `headrace-console` the issuers file names for
    the console; `carol` (the provider's `carol-at-idp`) is a non-admin user with a home of her own."""

    CLIENT = "headrace-console"

    def __init__(self, server: Server, provider: OidcProvider) -> None:
        self.server = server
        self.provider = provider


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oidc]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    base = tmp_path_factory.mktemp("oidc")
    provider = OidcProvider().start()
    server = Server(data=base / "data", cli_config=base / "cli.json")
    # as a Keycloak public client: the console's URL as redirect URI, its origin as web origin (CORS)
    provider.add_public_client(Oidc.CLIENT, server.api_url, f"{server.api_url}/console/")
    provider.add_user("carol-at-idp", "carol-pw", preferred_username="carol")
    provider.add_user("stranger", "stranger-pw")  # no headrace user maps to this one
    issuers = base / "issuers.yaml"
    issuers.write_text(
        f"""
- issuer: {provider.issuer}
  users: {{carol-at-idp: carol}}
  console:
    client_id: {Oidc.CLIENT}
    scopes: openid profile
    name: Test IdP
"""
    )
    server.args_extra = ["--token-issuers", str(issuers)]
    server.start()
    try:
        _, key, uid = add_user(server, "carol")
        ns_post(server, "/", {"action": "mkdir", "name": "home-carol"})
        ns_post(server, "/home-carol", {"action": "chown", "uid": uid})
        put(server, "/home-carol/notes.txt", b"carol's notes\n", auth=("carol", key))
        ns_post(server, "/", {"action": "mkdir", "name": "vault"})
        ns_post(server, "/vault", {"action": "chmod", "mode": 0o700})
        put(server, "/vault/secret.txt", b"s")
        yield Oidc(server, provider)
    finally:
        server.stop()
        provider.stop()


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def provider_login(drv: WebDriver, username: str, password: str) -> None:
    """At the provider's login form (another origin): the user name, the password, submit."""
    shown(drv, "#username", "the provider's login form").send_keys(username)
    drv.find_element(By.ID, "password").send_keys(password)
    click(drv, "#login")


def test_signing_in_with_the_oidc_provider_as_a_non_admin_user(oidc: Oidc, tmp_path: Path) -> None:
    server, provider = oidc.server, oidc.provider
    offered = http("GET", f"{server.api_url}/api/v1/console/login").json()["providers"]
    assert offered == [
        {
            "name": "Test IdP",
            "issuer": provider.issuer,
            "clientId": Oidc.CLIENT,
            "scopes": "openid profile",
            "authorizationEndpoint": f"{provider.issuer}/authorize",
            "tokenEndpoint": f"{provider.issuer}/token",
        }
    ]
    d = browser()
    try:
        d.get(f"{server.api_url}/console/#/files/home-carol")
        button = shown(d, "#signin-oidc button", "the OIDC sign-in offered")
        assert button.text == "Sign in with Test IdP"
        assert find(d, "#signin-user") is not None  # the other ways stay
        shot(d, "signin-oidc")
        button.click()
        until(lambda: d.current_url.startswith(f"{provider.issuer}/authorize?"), "the provider's login page")
        asked = query_of(d.current_url)
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert asked["redirect_uri"] == f"{server.api_url}/console/" and asked["state"]
        provider_login(d, "carol-at-idp", "carol-pw")

        until(lambda: (w := find(d, "#whoami")) is not None and w.text == "carol", "carol signed in")
        assert provider.logins[-1] == ("carol-at-idp", Oidc.CLIENT)
        shown(d, "#files-table tr[data-name='notes.txt']", "carol's files, the view the sign-in started from")
        assert "code=" not in d.current_url and "state=" not in d.current_url  # the answer leaves the address bar
        kept = d.execute_script("return JSON.parse(sessionStorage.getItem('headrace.console.auth'))")
        assert kept["kind"] == "oidc" and kept["token"].count(".") == 2  # the provider's JWT, kept as keys are
        assert "Test IdP" in find(d, "#whoami").get_attribute("title")
        # the token goes to the door too: an upload from the page
        local = tmp_path / "scan.txt"
        local.write_bytes(b"uploaded with a bearer token\n")
        d.find_element(By.ID, "upload-input").send_keys(str(local))
        shown(d, "#files-table tr[data-name='scan.txt']", "the uploaded file listed")
        stat = http("GET", f"{server.api_url}/api/v1/namespace/home-carol/scan.txt", auth=server.auth).json()
        assert stat["size"] == len(b"uploaded with a bearer token\n")
        # another user's private directory: refused, in the API's words
        go(d, "#/files/vault")
        until(lambda: error_text(d) != "", "the refusal of the private directory")
        refusal = error_text(d)
        assert "denied" in refusal.lower() or "permission" in refusal.lower(), refusal
        assert "secret.txt" not in d.find_element(By.ID, "main").text and find(d, "#files-table") is None

        click(d, "#signout")
        shown(d, "#signin-oidc button", "the sign-in page again")
        assert d.execute_script("return sessionStorage.length") == 0
        # an identity no headrace user maps to: the provider logs it in, the API refuses it and says why
        click(d, "#signin-oidc button")
        provider_login(d, "stranger", "stranger-pw")
        until(lambda: "no headrace user" in error_text(d), "the API's refusal of the unmapped identity")
        assert "'stranger'" in error_text(d) and provider.issuer in error_text(d)
        shown(d, "#signin-oidc button", "the sign-in page after the refusal")
        assert d.execute_script("return sessionStorage.length") == 0
        # an answer this tab did not ask for (a forged or replayed redirect): refused before any exchange
        d.get(f"{server.api_url}/console/?code=forged&state=forged")
        until(lambda: "not started in this tab" in error_text(d), "the refusal of a foreign state")
        assert "code=" not in d.current_url
    finally:
        d.quit()


def test_without_a_console_client_no_oidc_sign_in_is_offered(server: Server) -> None:
    assert http("GET", f"{server.api_url}/api/v1/console/login").json() == {"providers": []}
    d = browser()
    try:
        d.get(f"{server.api_url}/console/")
        shown(d, "#signin-user")
        until(lambda: find(d, ".signin[data-providers]"), "the sign-in page's offer complete")
        assert find(d, ".signin").get_attribute("data-providers") == "0"
        assert find(d, "#signin-oidc") is None and "Sign in with" not in d.find_element(By.ID, "main").text.replace(
            "Sign in with token", ""
        )
    finally:
        d.quit()
