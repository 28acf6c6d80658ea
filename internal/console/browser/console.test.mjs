// Browser test of the console, run by internal/console's TestBrowser against
// a real stack (Redis, worker, sandbox API, intake). It drives Debian's
// chromium with playwright-core, checks every page with axe-core, and saves a
// screenshot of each page in $OUT.
//
// Environment: BASE (the intake's URL), OPERATOR_KEY, READONLY_KEY,
// CAMPAIGN (running, with dead letters whose token is fixed),
// PURGE_CAMPAIGN (dead letters to purge), PARKED (a parked location to release), OUT (screenshot folder),
// CHROMIUM (default /usr/bin/chromium).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`set ${k}`);
  return v;
};
const BASE = env("BASE");
const OPERATOR_KEY = env("OPERATOR_KEY");
const READONLY_KEY = env("READONLY_KEY");
const CAMPAIGN = env("CAMPAIGN");
const PURGE_CAMPAIGN = env("PURGE_CAMPAIGN");
const PARKED = env("PARKED");
const OUT = env("OUT");
fs.mkdirSync(OUT, { recursive: true });

const step = (msg) => console.log(`browser: ${msg}`);
const fail = (msg) => {
  throw new Error(msg);
};
const expect = (ok, msg) => {
  if (!ok) fail(msg);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});

const cspErrors = [];
const axeResults = {};

async function newPage(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...opts });
  const page = await ctx.newPage();
  page.on("console", (m) => {
    if (/Content[- ]Security[- ]Policy/i.test(m.text())) cspErrors.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => fail(`script error on ${page.url()}: ${e.message}`));
  return { ctx, page };
}

// check runs axe on the page (injected over the DevTools protocol, which the
// page's CSP does not govern) and keeps serious and critical violations.
async function check(page, name) {
  await page.evaluate(axeSource);
  const res = await page.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } }));
  expect(res.passes.length > 10, `${name}: axe checked almost nothing (${res.passes.length} rules passed)`);
  const bad = res.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  axeResults[name] = { violations: res.violations.length, serious: bad.length };
  for (const v of bad) {
    console.log(`axe: ${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join("; ")})`);
  }
  expect(bad.length === 0, `${name}: ${bad.length} serious or critical accessibility violations`);
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });
  step(`${name}: axe ${res.violations.length} minor, 0 serious; screenshot saved`);
}

async function signIn(page, key) {
  await page.goto(`${BASE}/console/`);
  expect(page.url().includes("/console/login"), `signed out, / should lead to sign-in, got ${page.url()}`);
  await page.fill("#key", key);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
}

const num = (s) => Number(String(s).replace(/[^0-9]/g, ""));

try {
  // 1. A wrong key is refused.
  const { ctx, page } = await newPage();
  await page.goto(`${BASE}/console/`);
  await check(page, "login");
  await page.fill("#key", "not-a-key-0123456789abcdef");
  const [wrong] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  expect(wrong.status() === 401, `wrong key: want 401, got ${wrong.status()}: ${await page.content()}`);
  expect((await page.textContent("[role=alert]")).includes("not accepted"), "wrong key: no error shown");
  expect(!(await page.content()).includes("not-a-key-0123456789abcdef"), "the key was echoed");
  step("a wrong key is refused");

  // 2. Sign in; the campaigns list.
  await page.fill("#key", OPERATOR_KEY);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  expect(new URL(page.url()).pathname === "/console/", `after sign-in: ${page.url()}`);
  const cookies = await ctx.cookies();
  const sess = cookies.find((c) => c.name === "ghlcancel_session");
  expect(sess && sess.httpOnly && sess.sameSite === "Strict", `session cookie flags: ${JSON.stringify(sess)}`);
  expect(!page.url().includes(OPERATOR_KEY), "key in the URL");
  expect(await page.isVisible(`a:has-text("${CAMPAIGN}")`), "the campaign is not listed");
  await check(page, "campaigns");
  step("signed in; campaigns listed");

  // 3. The running campaign's progress moves by itself (polling every 2 s).
  await Promise.all([page.waitForNavigation(), page.click(`a:has-text("${CAMPAIGN}")`)]);
  const before = num(await page.textContent("#done"));
  const total = num(await page.textContent("#total"));
  expect(before < total, `the campaign should still run: ${before} of ${total}`);
  await page.waitForFunction((b) => Number(document.querySelector("#done").textContent.replace(/[^0-9]/g, "")) > b,
    before, { timeout: 15000 });
  const after = num(await page.textContent("#done"));
  const rate = await page.textContent("#rate");
  step(`progress moved from ${before} to ${after} of ${total} without a reload (rate ${rate})`);
  expect(/\/s$/.test(rate.trim()), `rate not shown: ${rate}`);
  await check(page, "campaign");
  // A refresh that fails (the intake answers 503) keeps the numbers and
  // says they are old; the next good one clears it.
  await page.route("**/console/campaign/live**", (route) => route.fulfill({ status: 503, body: "down" }));
  await page.waitForSelector("#live-stale:not([hidden])", { timeout: 10000 });
  const staleText = await page.textContent("#live-stale");
  expect(staleText.includes("Not updated since") && staleText.includes("HTTP 503"), `stale note: ${staleText}`);
  await page.unroute("**/console/campaign/live**");
  await page.waitForSelector("#live-stale", { state: "hidden", timeout: 10000 });
  step("a failed refresh says the numbers are old; the next one clears it");

  // 4. Its dead letters; requeue them (the token is fixed) and see them cancelled.
  const deadLink = page.locator("#dead-h ~ div a").first();
  await Promise.all([page.waitForNavigation(), deadLink.click()]);
  expect(page.url().includes("reason=unauthorized"), `dead letters link: ${page.url()}`);
  const boxes = await page.locator("input.pick").count();
  expect(boxes > 0, "no dead letters to select");
  await check(page, "dead-letters");
  await page.check("#select-all");
  await Promise.all([page.waitForNavigation(), page.click("#requeue-selected")]);
  const flash = await page.textContent("[role=status]");
  expect(flash.includes(`Requeued ${boxes}.`), `requeue flash: ${flash}`);
  step(`requeued ${boxes} selected dead letters`);
  await page.goto(`${BASE}/console/campaign?id=${encodeURIComponent(CAMPAIGN)}`);
  await page.waitForFunction(() => document.querySelector("#o-dead_lettered").textContent.trim() === "0", null, { timeout: 20000 });
  await page.waitForFunction(() => document.querySelector("#live-inner").dataset.complete === "true", null, { timeout: 120000 });
  const cancelled = num(await page.textContent("#o-cancelled"));
  expect(cancelled === total, `after the requeue: cancelled ${cancelled} of ${total}`);
  await check(page, "campaign-complete");
  step(`campaign complete: ${cancelled} of ${total} cancelled, 0 dead letters`);

  // 5. A state-changing request without the CSRF token is refused.
  const csrfStatus = await page.evaluate(async (base) => {
    const r = await fetch(`${base}/console/dead/requeue`, { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "scope=filter&reason=unauthorized" });
    return r.status;
  }, BASE);
  expect(csrfStatus === 403, `POST without CSRF token: want 403, got ${csrfStatus}`);
  step("a POST without the CSRF token is refused (403)");

  // 6. Purge with a typed confirmation.
  await page.goto(`${BASE}/console/dead?campaign=${encodeURIComponent(PURGE_CAMPAIGN)}`);
  await Promise.all([page.waitForNavigation(), page.click("#purge-link")]);
  const n = num(await page.textContent("#purge-count"));
  expect(n > 0, "nothing to purge");
  await check(page, "purge-confirm");
  await page.fill("#confirm", String(n + 1));
  const [refused] = await Promise.all([page.waitForNavigation(), page.click("button.danger")]);
  expect(refused.status() === 422, `wrong confirmation: want 422, got ${refused.status()}`);
  expect((await page.textContent("[role=alert]")).includes("Nothing was deleted"), "wrong confirmation not explained");
  await page.fill("#confirm", String(n));
  await Promise.all([page.waitForNavigation(), page.click("button.danger")]);
  expect((await page.textContent("[role=status]")).includes(`Purged ${n} dead letters.`), "purge flash missing");
  expect((await page.locator("input.pick").count()) === 0, "purged dead letters still listed");
  step(`purged ${n} dead letters after typing ${n} (a wrong number was refused)`);

  await page.goto(`${BASE}/console/locations`);
  await check(page, "locations");
  await Promise.all([page.waitForNavigation(), page.click(`button[aria-label="Release ${PARKED}"]`)]);
  expect((await page.textContent("[role=status]")).includes(`Released ${PARKED}`), "release flash missing");
  expect(!(await page.content()).includes(`<strong>${PARKED}</strong>`), "released location still listed as parked");
  step(`released the parked location ${PARKED}`);

  // 7. Phone width, dark mode: nothing wider than the screen.
  const phone = await newPage({ viewport: { width: 390, height: 844 }, colorScheme: "dark", storageState: await ctx.storageState() });
  for (const [name, url] of [["phone-campaigns", "/console/"], ["phone-campaign", `/console/campaign?id=${encodeURIComponent(CAMPAIGN)}`],
    ["phone-dead-letters", "/console/dead"]]) {
    await phone.page.goto(BASE + url);
    const over = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(over <= 0, `${name}: the page is ${over}px wider than a 390px screen`);
    const bg = await phone.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    expect(bg !== "rgb(255, 255, 255)" && bg !== "rgb(247, 248, 250)", `${name}: not dark in dark mode (${bg})`);
    await check(phone.page, name);
  }
  await phone.ctx.close();
  step("phone width and dark mode: no page wider than 390px, dark background");

  // 8. Sign out: the session is gone.
  await Promise.all([page.waitForNavigation(), page.click("text=Sign out")]);
  expect(page.url().includes("/console/login"), `after sign-out: ${page.url()}`);
  await page.goto(`${BASE}/console/`);
  expect(page.url().includes("/console/login"), "signed out, yet the console opened");
  step("signed out");
  await ctx.close();

  // 9. A read-only key sees, cannot requeue.
  const ro = await newPage();
  await signIn(ro.page, READONLY_KEY);
  await ro.page.goto(`${BASE}/console/dead`);
  expect((await ro.page.textContent(".who")).includes("read-only"), "read-only badge missing");
  expect((await ro.page.locator("#requeue-selected").count()) === 0, "read-only session offered a requeue button");
  await check(ro.page, "dead-letters-readonly");
  const roStatus = await ro.page.evaluate(async (base) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const r = await fetch(`${base}/console/dead/requeue`, { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `csrf=${csrf}&scope=filter&reason=unauthorized` });
    return r.status;
  }, BASE);
  expect(roStatus === 403, `read-only requeue: want 403, got ${roStatus}`);
  step("a read-only key cannot requeue (403)");
  await ro.ctx.close();

  expect(cspErrors.length === 0, `Content-Security-Policy violations:\n${cspErrors.join("\n")}`);
  console.log(`axe: ${JSON.stringify(axeResults)}`);
  step("ok");
} catch (e) {
  console.error(`browser: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
