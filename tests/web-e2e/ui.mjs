// The technician's walk through the web UI in Debian's Chromium, driven by Playwright (no
// browser download): first-boot setup with the token, log out and in, a connected client
// found and kicked, a bridge seen going down when its upstream stops and coming back with its
// queue draining, a config mistake shown at its line, the live log and a client trace,
// keyboard-only navigation, screenshots at desktop and phone sizes, and an axe-core scan of
// every page with no violation (serious or not).
//
// The Rust test (tests/tests/web_ui.rs) owns the processes. This script asks it for what only
// it can do with a line `ASK <what>` on stdout and waits for `ok` (or `fail <why>`) on stdin.
// Environment: HOLDFAST_URL, SETUP_TOKEN, SCREENSHOTS (a directory), CHROMIUM, KICK_CLIENT.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");
const URL = process.env.HOLDFAST_URL;
const SHOTS = process.env.SCREENSHOTS;
const PASSWORD = "technician password 1";
const WAIT = 20000;
mkdirSync(SHOTS, { recursive: true });

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log("ASK " + what);
  const { value, done } = await answers.next();
  if (done || value.trim() !== "ok") throw new Error(`the test could not ${what}: ${value}`);
}

function step(what) {
  console.log("STEP " + what);
}

const scanned = [];
async function axeScan(page, name) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
  });
  // Every violation fails, not only the serious ones: axe is pinned, so a new one is ours.
  scanned.push(`${name}: ${violations.length}`);
  if (violations.length) throw new Error(`axe on ${name}: ${JSON.stringify(violations, null, 1)}`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function login(page) {
  await page.getByRole("heading", { name: "Log in" }).waitFor({ timeout: WAIT });
  await page.getByLabel("Admin password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor({ timeout: WAIT });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
try {
  // axe is added as a script tag: the page's own CSP (script-src 'self') would refuse it.
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
  const page = await desktop.newPage();
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => { throw new Error("script error in the page: " + e.message); });

  step("first-boot setup");
  await page.goto(URL);
  await page.getByRole("heading", { name: "Set up this gateway" }).waitFor({ timeout: WAIT });
  await axeScan(page, "setup");
  await shot(page, "desktop-setup");
  await page.getByLabel("Setup token").fill("not the token");
  await page.getByLabel(/New admin password/).fill(PASSWORD);
  await page.getByLabel("Repeat the password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create the admin account" }).click();
  await page.getByText("wrong setup token").waitFor({ timeout: WAIT });
  await page.getByLabel("Setup token").fill(process.env.SETUP_TOKEN);
  await page.getByRole("button", { name: "Create the admin account" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor({ timeout: WAIT });
  await page.getByText("tcp:default").first().waitFor({ timeout: WAIT });
  await axeScan(page, "overview");
  await shot(page, "desktop-overview");

  step("log out and in");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByLabel("Admin password").fill("wrong password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("wrong password").waitFor({ timeout: WAIT });
  await axeScan(page, "login");
  await login(page);

  step("keyboard only: a fresh load, the skip link, then the Clients link");
  await page.reload();
  await page.getByText("tcp:default").first().waitFor({ timeout: WAIT });
  await page.keyboard.press("Tab");
  const skip = await page.evaluate(() => document.activeElement.textContent);
  if (skip !== "Skip to content") throw new Error("the first Tab stop is " + skip);
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement.textContent === "Clients");
  }
  if (!reached) throw new Error("the Clients link cannot be reached with Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Clients" }).waitFor({ timeout: WAIT });

  step("find the connected client and kick it");
  const kickee = process.env.KICK_CLIENT;
  await page.getByRole("searchbox").fill(kickee);
  const row = page.getByRole("row").filter({ hasText: kickee });
  await row.getByText("connected").waitFor({ timeout: WAIT });
  await axeScan(page, "clients");
  await shot(page, "desktop-clients");
  await row.getByRole("button", { name: "Kick " + kickee }).click();
  await page.getByText(`Client "${kickee}" disconnected.`).waitFor({ timeout: WAIT });
  await ask("check the kick");

  step("a bridge goes down with its upstream and drains when it comes back");
  await page.getByRole("link", { name: "Bridges" }).click();
  const state = page.getByTestId("bridge-state");
  await state.filter({ hasText: /^up$/ }).waitFor({ timeout: WAIT });
  await ask("stop the upstream");
  await state.filter({ hasNotText: /^up$/ }).waitFor({ timeout: WAIT });
  await ask("publish while the upstream is down");
  await page.getByTestId("bridge-queued").filter({ hasText: /^[1-9]\d* messages/ }).waitFor({ timeout: WAIT });
  await axeScan(page, "bridges");
  await shot(page, "desktop-bridge-down");
  await ask("start the upstream");
  await state.filter({ hasText: /^up$/ }).waitFor({ timeout: WAIT * 2 });
  await page.getByTestId("bridge-queued").filter({ hasText: /^0 messages/ }).waitFor({ timeout: WAIT * 2 });
  await ask("check the drained messages");
  await shot(page, "desktop-bridge-drained");

  step("a config mistake shown at its line");
  await page.getByRole("link", { name: "Configuration" }).click();
  const editor = page.getByLabel("Configuration (TOML)");
  await editor.waitFor({ timeout: WAIT });
  await page.waitForFunction(() => document.getElementById("config-text").value.includes("[web]"), null, { timeout: WAIT });
  const text = await editor.inputValue();
  const mistake = text.replace(/\n*$/, "\n") + "\n[coap]\nbind = \"no such address\"\n";
  const line = mistake.split("\n").findIndex((l) => l.startsWith("bind = \"no such")) + 1;
  await editor.fill(mistake);
  await page.getByRole("button", { name: "Check" }).click();
  const problem = page.locator(`.problem[data-line="${line}"]`);
  await problem.waitFor({ timeout: WAIT });
  if (!(await problem.textContent()).includes("coap.bind")) throw new Error("the problem does not name coap.bind: " + (await problem.textContent()));
  await problem.getByRole("button", { name: "Line " + line }).click();
  const selected = await page.evaluate(() => { const t = document.getElementById("config-text"); return t.value.slice(t.selectionStart, t.selectionEnd); });
  if (!selected.startsWith("bind = \"no such")) throw new Error("the line button selected " + JSON.stringify(selected));
  await page.getByRole("button", { name: "Apply and restart" }).click();
  await problem.waitFor({ timeout: WAIT });
  await axeScan(page, "config");
  await shot(page, "desktop-config-mistake");
  await ask("check the config file is untouched");

  step("the other pages scan clean");
  for (const [link, heading] of [["Subscriptions", "Subscriptions"], ["Retained", "Retained messages"], ["Devices", "Device gateways"], ["API tokens", "API tokens"]]) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await page.getByRole("heading", { name: heading, level: 1 }).waitFor({ timeout: WAIT });
    await page.waitForTimeout(300);
    await axeScan(page, link);
  }

  step("the live log and a trace");
  await page.getByRole("link", { name: "Logs", exact: true }).click();
  await page.getByRole("log").getByText(/web: admin logged in/).first().waitFor({ timeout: WAIT });
  await page.getByLabel("Trace by", { exact: true }).selectOption("client");
  await page.getByLabel("Value", { exact: true }).fill("traced-by-ui");
  await page.getByRole("button", { name: "Start trace" }).click();
  await page.getByRole("button", { name: "Stop trace of traced-by-ui" }).waitFor({ timeout: WAIT });
  await ask("publish as traced-by-ui");
  await page.getByRole("log").getByText(/traced-by-ui/).first().waitFor({ timeout: WAIT });
  await axeScan(page, "logs");
  await shot(page, "desktop-logs");
  await page.getByRole("button", { name: "Stop trace of traced-by-ui" }).click();
  const link = page.getByRole("link", { name: /^client-\d+\.log$/ });
  await link.waitFor({ timeout: WAIT });
  const traced = await page.evaluate(async (href) => (await fetch(href)).text(), await link.getAttribute("href"));
  if (!traced.includes("traced-by-ui")) throw new Error("the trace file lacks the client: " + traced.slice(0, 300));

  step("phone size");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, bypassCSP: true });
  const small = await phone.newPage();
  small.on("dialog", (d) => d.accept());
  await small.goto(URL);
  await login(small);
  await small.getByText("tcp:default").first().waitFor({ timeout: WAIT });
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the phone page is ${overflow}px wider than the screen`);
  await axeScan(small, "phone overview");
  await shot(small, "phone-overview");
  for (const [link, heading, name] of [["Clients", "Clients", "phone-clients"], ["Bridges", "Bridges", "phone-bridges"], ["Configuration", "Configuration", "phone-config"]]) {
    await small.getByRole("link", { name: link, exact: true }).click();
    await small.getByRole("heading", { name: heading, level: 1 }).waitFor({ timeout: WAIT });
    await small.waitForTimeout(500);
    const wide = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (wide > 0) throw new Error(`${link} on a phone is ${wide}px wider than the screen`);
    await axeScan(small, "phone " + link);
    await shot(small, name);
  }
  step("apply a good config: the gateway restarts, the technician stays logged in and keeps it");
  await page.getByRole("link", { name: "Configuration", exact: true }).click();
  const config = page.getByLabel("Configuration (TOML)");
  await config.waitFor({ timeout: WAIT });
  await page.waitForFunction(() => document.getElementById("config-text").value.includes("[web]"), null, { timeout: WAIT });
  const good = (await config.inputValue()).replace(/\n*$/, "\n") + "\n# applied from the web UI\n";
  await config.fill(good);
  await page.getByRole("button", { name: "Apply and restart" }).click();
  const keep = page.getByRole("button", { name: "Keep this configuration" });
  await keep.waitFor({ timeout: 60000 });
  if (await page.getByRole("heading", { name: "Log in" }).count()) throw new Error("the restart asked for a new login");
  await axeScan(page, "probation banner");
  await shot(page, "desktop-probation");
  await keep.click();
  await page.getByText("The configuration is kept.").waitFor({ timeout: WAIT });
  await keep.waitFor({ state: "detached", timeout: WAIT });
  await ask("check the applied config is kept");

  console.log("AXE " + scanned.join("; "));
  console.log("PASS");
} finally {
  await browser.close();
}
process.exit(0);
