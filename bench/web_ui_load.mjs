// Keeps the technician's UI open in headless Chromium for the web benchmark: logs in, opens the
// Bridges page (its live graph polls every 2 s) and the Logs page (the live tail polls every
// 2 s) in two tabs, and stays until stdin closes. Prints "READY" once both pages show data.
//
//   node bench/web_ui_load.mjs http://127.0.0.1:PORT/ PASSWORD
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../tests/web-e2e/package.json"));
const { chromium } = require("playwright-core");
const [url, password] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const first = await context.newPage();
await first.goto(url);
await first.getByLabel("Admin password").fill(password);
await first.getByRole("button", { name: "Log in" }).click();
await first.getByRole("heading", { name: "Overview" }).waitFor({ timeout: 20000 });
await first.goto(url + "#/bridges");
await first.getByTestId("bridge-state").first().waitFor({ timeout: 20000 });
const second = await context.newPage();
await second.goto(url + "#/logs");
await second.getByRole("log").locator("span").first().waitFor({ timeout: 20000 });
console.log("READY");
process.stdin.resume();
await new Promise((resolve) => process.stdin.on("end", resolve));
await browser.close();
process.exit(0);
