// The extension in a real VS Code in a real browser: code-server on 127.0.0.1 with its own user
// data, extensions and config folders, the packaged .vsix installed into it, Debian's chromium
// driven headless by playwright-core. A real repository with a staged change is opened; the test
// types in the Source Control box, waits for cmc's ghost text, accepts it with Tab, commits, and
// checks the commit's message against `cmc complete` for the same prefix; then with nothing
// typed; then with cmc missing.
//
//   npm run e2e    (runs e2e/setup.sh first, which installs once; needs the README's set-up:
//                   `cmc` on PATH)
//
// Environment: CMC_E2E_CODE_SERVER (version, default 4.139.1), CMC_E2E_HOME (where setup.sh put
// it), CMC_E2E_CHROMIUM (default: chromium on PATH), CMC_E2E_OUT (default e2e-out/),
// CMC_E2E_KEEP=1 keeps the temporary folder.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const EXT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const version = process.env.CMC_E2E_CODE_SERVER || "4.139.1";
const csHome = join(process.env.CMC_E2E_HOME || join(homedir(), ".cache", "cmc", "e2e"), `code-server-${version}`);
const csNode = join(csHome, "node", "bin", "node");
const csEntry = join(csHome, "app", "node_modules", "code-server", "out", "node", "entry.js");
const out = resolve(process.env.CMC_E2E_OUT || join(EXT, "e2e-out"));
const TIMEOUT = 120_000; // generous: a busy 2-core machine starts VS Code slowly

function which(cmd) {
  for (const dir of (process.env.PATH || "").split(delimiter)) {
    if (dir && existsSync(join(dir, cmd))) {
      return join(dir, cmd);
    }
  }
  return undefined;
}

function fail(message) {
  console.error(`e2e: ${message}`);
  process.exit(1);
}

const browserPath = process.env.CMC_E2E_CHROMIUM || which("chromium") || which("chromium-browser");
const cmc = which("cmc");
if (!existsSync(join(csHome, "ready"))) {
  fail(`code-server ${version} is not installed in ${csHome}: run \`bash e2e/setup.sh\` first`);
}
if (!browserPath) {
  fail("chromium is not installed (Debian: apt-get install chromium), or set CMC_E2E_CHROMIUM");
}
if (!cmc) {
  fail("cmc is not on PATH: activate the virtual environment of the README's set-up");
}

const work = mkdtempSync(join(tmpdir(), "cmc-e2e-"));
const repo = join(work, "repo");
const git = (...args) => execFileSync("git", args, { cwd: repo, encoding: "utf8" });

/** A repository with an author's history and a staged change, as a user would have it. */
function makeRepo() {
  mkdirSync(repo);
  git("init", "-q", "-b", "main");
  git("config", "user.name", "Ada Lovelace");
  git("config", "user.email", "ada@example.com");
  git("config", "commit.gpgsign", "false");
  const history = [
    ["README.md", "# parser\n\nParses config files.\n", "Add README"],
    ["parser.py", "def parse(text):\n    return [line.split('=') for line in text.splitlines()]\n", "Add a first parser"],
    ["parser.py", "def parse(text):\n    return [line.split('=', 1) for line in text.splitlines() if line]\n", "Fix parser crash on empty lines"],
    ["test_parser.py", "from parser import parse\n\n\ndef test_parse():\n    assert parse('a=b') == [['a', 'b']]\n", "Add tests for the parser"],
  ];
  for (const [file, text, message] of history) {
    writeFileSync(join(repo, file), text);
    git("add", file);
    git("commit", "-q", "-m", message);
  }
  writeFileSync(
    join(repo, "parser.py"),
    "def parse(text):\n    pairs = []\n    for line in text.splitlines():\n        line = line.strip()\n" +
      "        if not line or line.startswith('#'):\n            continue\n        pairs.append(line.split('=', 1))\n    return pairs\n",
  );
  git("add", "parser.py");
  buildMemory();
}

/** The repository's memory brought up to date now, as the daemon would in the background: the
 *  answers asked beforehand and those the extension gets then come from the same memory. */
function buildMemory() {
  execFileSync(cmc, ["memory", "build"], { cwd: repo, stdio: "ignore" });
}

/** What the extension asks for, asked directly: the first line of the best continuation. */
function cmcContinuation(prefix) {
  const text = execFileSync(cmc, ["complete", "--json", "--respect-enabled", "--repo", repo, "--prefix", prefix,
    "-n", "1", "--beams", "1", "--max-new-tokens", "12"], { cwd: repo, encoding: "utf8" });
  const best = JSON.parse(text).candidates[0];
  return best ? best.continuation.split("\n")[0] : "";
}

function writeSettings(userData, extra) {
  mkdirSync(join(userData, "User"), { recursive: true });
  writeFileSync(join(userData, "User", "settings.json"), JSON.stringify({
    "security.workspace.trust.enabled": false,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.enableExperiments": false,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "git.openRepositoryInParentFolders": "always",
    "editor.inlineSuggest.enabled": true,
    "chat.disableAIFeatures": true,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    ...extra,
  }, null, 2));
}

function codeServer(args, env, onLine) {
  const child = spawn(csNode, [csEntry, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  let buffered = "";
  const read = (chunk) => {
    buffered += chunk.toString();
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      onLine(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
    }
  };
  child.stdout.on("data", read);
  child.stderr.on("data", read);
  return child;
}

async function main() {
  for (const name of ["scm-ghost-text.png", "scm-cmc-missing.png", "failure.png"]) {
    rmSync(join(out, name), { force: true }); // what it leaves is this run's alone
  }
  mkdirSync(out, { recursive: true });
  makeRepo();
  const userData = join(work, "user-data");
  const extensions = join(work, "extensions");
  const config = join(work, "config.yaml");
  writeFileSync(config, "bind-addr: 127.0.0.1:0\nauth: none\ncert: false\n");
  // VS Code's server runs extensions with a login shell's PATH, without the set-up's virtual
  // environment: the setting a user of a virtual environment sets (README: cmc.path).
  writeSettings(userData, { "cmc.path": cmc });
  // The same PATH for VS Code's extension host as here: cmc comes from the set-up's environment.
  const env = { ...process.env, PATH: `${dirname(cmc)}${delimiter}${process.env.PATH}` };
  const common = ["--config", config, "--user-data-dir", userData, "--extensions-dir", extensions];

  const vsix = join(EXT, "cmc-commit-messages.vsix");
  execFileSync("npm", ["run", "compile"], { cwd: EXT, stdio: "ignore" });
  execFileSync("npm", ["run", "package"], { cwd: EXT, stdio: "ignore" });
  execFileSync(csNode, [csEntry, ...common, "--install-extension", vsix], { env, stdio: "ignore" });

  const results = {};
  const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox"] });
  try {
    await inVsCode(browser, common, env, userData, async (page) => {
      const box = await openScmBox(page);
      const ghost = page.locator(".scm-editor .ghost-text-decoration, .scm-editor .ghost-text");
      const ghostText = async () => (await ghost.allInnerTexts()).join("").replace(/\u00a0/g, " ");
      const boxText = async () => (await page.locator(".scm-editor .view-lines").innerText()).replace(/\u00a0/g, " ");

      // 1. A prefix typed one key at a time: after each key, how long until the ghost text shows
      //    what cmc completes for the text typed so far (asked beforehand, as the extension asks).
      // (a start no earlier message has: the model writes the rest, not the memory)
      const prefix = "Skip comment lines";
      const want = [...prefix].map((_, i) => cmcContinuation(prefix.slice(0, i + 1)));
      const waits = [];
      await box.click();
      for (let i = 0; i < prefix.length; i++) {
        await page.keyboard.type(prefix[i]);
        const t0 = Date.now();
        if (want[i] === "") {
          continue; // cmc has nothing to add here: no ghost text to wait for
        }
        if (!(await waitUntil(async () => (await ghostText()) === want[i], 30_000))) {
          const now = JSON.stringify(await ghostText());
          throw new Error(`after ${JSON.stringify(prefix.slice(0, i + 1))} the ghost text was ${now}, not ${JSON.stringify(want[i])}`);
        }
        waits.push(Date.now() - t0);
      }
      if (waits.length < 10) {
        throw new Error(`only ${waits.length} of ${prefix.length} keystrokes had a suggestion`);
      }
      waits.sort((a, b) => a - b);
      results.keystrokes = waits.length;
      results.ghost_p95_ms = waits[Math.ceil(0.95 * waits.length) - 1];
      results.ghost_median_ms = waits[Math.floor(waits.length / 2)];
      const shown = await ghostText();
      const origin = await page.locator(".statusbar-item", { hasText: "cmc" }).first().getAttribute("aria-label");
      await page.screenshot({ path: join(out, "scm-ghost-text.png") });
      // Tab accepts; Ctrl+Enter commits, so the message is read back from git itself (the box
      // wraps long lines on screen).
      await page.keyboard.press("Tab");
      const expected = prefix + want[prefix.length - 1];
      const accepted = await commitFromBox(page);
      results.typed = { prefix, ghost: shown, accepted, expected, origin, asked: want };

      // 2. Nothing typed, a new change staged: asked for explicitly.
      writeFileSync(join(repo, "README.md"), "# parser\n\nParses config files: `key=value` lines, `#` comments.\n");
      git("add", "README.md");
      buildMemory(); // it holds the commit just made
      const whole = cmcContinuation("");
      await box.click();
      await waitUntil(async () => (await boxText()).trim() === "", 10_000);
      // the extension's command "cmc: Suggest a commit message again", from the command palette
      await page.keyboard.press("F1");
      await page.keyboard.type("cmc: Suggest a commit message again");
      await page.locator(".quick-input-list .monaco-list-row", { hasText: "Suggest a commit message again" }).first().waitFor();
      await page.keyboard.press("Enter");
      if (!(await waitUntil(async () => (await ghostText()) === whole.split("\n")[0], 30_000))) {
        throw new Error(`with nothing typed the ghost text was ${JSON.stringify(await ghostText())}, not ${JSON.stringify(whole)}`);
      }
      const wholeOrigin = await page.locator(".statusbar-item", { hasText: "cmc" }).first().getAttribute("aria-label");
      await page.keyboard.press("Tab");
      results.empty = { accepted: await commitFromBox(page), expected: whole.split("\n")[0], origin: wholeOrigin };
    });

    // 3. cmc missing (a path that does not exist): one clear line, once, however many keystrokes
    //    follow; no dialog, no ghost text.
    writeSettings(userData, { "cmc.path": join(work, "no-such-cmc") });
    await inVsCode(browser, common, env, userData, async (page) => {
      const box = await openScmBox(page);
      await box.click();
      for (const key of "Update docs") {
        await page.keyboard.type(key);
        await page.waitForTimeout(100);
      }
      const toast = page.locator(".notification-toast", { hasText: "was not found" });
      await toast.first().waitFor({ state: "visible", timeout: 30_000 });
      await page.keyboard.type(" and the changelog");
      await page.waitForTimeout(3000);
      results.missing = {
        message: (await toast.first().innerText()).split("\n").find((l) => l.includes("was not found")),
        toasts: await toast.count(),
        dialogs: await page.locator(".monaco-dialog-box").count(),
        ghost: await page.locator(".scm-editor .ghost-text-decoration, .scm-editor .ghost-text").count(),
      };
      await page.screenshot({ path: join(out, "scm-cmc-missing.png") });
    });
  } finally {
    await browser.close();
    try {
      execFileSync(cmc, ["serve", "--stop"], { stdio: "ignore" }); // the daemon the test started
    } catch {
      // none was running
    }
    if (!process.env.CMC_E2E_KEEP) {
      rmSync(work, { recursive: true, force: true });
    }
  }
  return results;
}

/** Commits what the Source Control box holds (Ctrl+Enter) and returns the new commit's message. */
async function commitFromBox(page) {
  const before = git("rev-parse", "HEAD").trim();
  await page.keyboard.press("Control+Enter");
  if (!(await waitUntil(async () => git("rev-parse", "HEAD").trim() !== before, 30_000))) {
    throw new Error("Ctrl+Enter in the Source Control box made no commit");
  }
  return git("log", "-1", "--format=%B").trim();
}

/** code-server started on a free port of 127.0.0.1, a page of it open on the repository, `use(page)`
 *  run; on a failure a screenshot and the extension's log say what happened. */
async function inVsCode(browser, common, env, userData, use) {
  const log = [];
  let port;
  const server = codeServer(
    [...common, "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
      "--disable-getting-started-override", "--bind-addr", "127.0.0.1:0", "--auth", "none"],
    env,
    (line) => {
      log.push(line);
      const m = line.match(/HTTP server listening on https?:\/\/[^:]+:(\d+)/);
      if (m) port = Number(m[1]);
    },
  );
  let page;
  try {
    await waitUntil(async () => port !== undefined || server.exitCode !== null, TIMEOUT);
    if (!port) {
      throw new Error("code-server did not start:\n" + log.slice(-20).join("\n"));
    }
    page = await browser.newPage({ viewport: { width: 760, height: 360 } });
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(`http://localhost:${port}/?folder=${encodeURIComponent(repo)}`);
    await page.waitForSelector("div.monaco-workbench");
    await use(page);
  } catch (err) {
    // What a person would look at: the screen, and what the extension logged.
    await page?.screenshot({ path: join(out, "failure.png") }).catch(() => {});
    console.error(`e2e: the screen at the failure: ${join(out, "failure.png")}`);
    console.error(extensionLog(userData) || "e2e: the extension logged nothing");
    throw err;
  } finally {
    await page?.close();
    server.kill();
    await waitUntil(async () => server.exitCode !== null || server.signalCode !== null, 10_000);
  }
}

/** The extension's own log ("Output > cmc"), from VS Code's logs folder. */
function extensionLog(userData) {
  const found = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (dir.includes("cmc.cmc-commit-messages")) found.push(path);
    }
  };
  try {
    walk(join(userData, "logs"));
  } catch {
    return "";
  }
  return found.map((f) => readFileSync(f, "utf8")).join("\n").split("\n").slice(-40).join("\n");
}

async function openScmBox(page) {
  const box = page.locator(".scm-editor .monaco-editor").first();
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    if (await box.isVisible()) {
      return box;
    }
    await page.keyboard.press("Control+Shift+G");
    await page.waitForTimeout(1000);
  }
  throw new Error("the Source Control message box never appeared");
}

/** Whether `check()` came true within `ms` (asked every 25 ms). */
async function waitUntil(check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) {
      return true;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

const results = await main().catch((err) => fail(err.stack || String(err)));
console.log(JSON.stringify({ codeServer: version, ...results }, null, 2));
const problems = [];
if (results.typed.accepted !== results.typed.expected) problems.push("accepted text differs from cmc complete's");
if (results.empty.accepted !== results.empty.expected || results.empty.expected === "") problems.push("no whole message with nothing typed");
if (results.ghost_p95_ms > 2000) problems.push(`ghost text p95 ${results.ghost_p95_ms} ms > 2000 ms`);
if (results.missing.toasts !== 1 || results.missing.dialogs !== 0) problems.push("cmc missing: not exactly one message");
if (problems.length) fail(problems.join("; "));
console.log(`e2e: passed on code-server ${version}: ghost text p95 ${results.ghost_p95_ms} ms over ${results.keystrokes} keystrokes; screenshot ${join(out, "scm-ghost-text.png")}`);
