import assert from "node:assert/strict";
import { test } from "node:test";
import { Completer, RunResult, Settings, describeSource, findExecutable, missingMessage, repoRootOf, typedBefore } from "../logic";

// A stub of what VS Code gives the extension: the input box's URI and a command runner.
const scmUri = (root: string) => ({
  scheme: "vscode-scm",
  query: "rootUri=" + encodeURIComponent("file://" + root),
});

test("the repository comes from the input box's URI", () => {
  assert.equal(repoRootOf(scmUri("/home/me/my repo")), "/home/me/my repo");
  assert.equal(repoRootOf({ scheme: "file", query: "" }), undefined);
  assert.equal(repoRootOf({ scheme: "vscode-scm", query: "" }), undefined);
});

test("typed text leaves comment lines out and stops at the cursor", () => {
  assert.equal(typedBefore("Fix pa\n# comment", 6), "Fix pa");
  assert.equal(typedBefore("# c\nFix the bug\nmore", 15), "Fix the bug");
});

function stub(replies: RunResult[], settings: Partial<Settings> = {}) {
  const calls: { cmd: string; args: string[]; cwd: string }[] = [];
  const completer = new Completer(
    async (cmd, args, cwd) => {
      calls.push({ cmd, args, cwd });
      return replies.shift() ?? { code: 1, stdout: "", stderr: "" };
    },
    () => ({ enabled: true, path: "cmc", timeoutMs: 1000, ...settings }),
  );
  return { completer, calls };
}

const json = (continuation: string) =>
  JSON.stringify({ prefix: "Fix pa", candidates: [{ message: "x", continuation, score: -1 }] });

test("asks cmc in the input box's repository and offers the rest of the line", async () => {
  const { completer, calls } = stub([{ code: 0, stdout: json("rser crash\nbody"), stderr: "" }]);
  assert.equal(await completer.complete("/r", "Fix pa"), "rser crash");
  assert.equal(calls[0].cwd, "/r");
  assert.deepEqual(calls[0].args.slice(0, 6), ["complete", "--json", "--respect-enabled", "--repo", "/r", "--prefix"]);
  assert.equal(calls[0].args[6], "Fix pa");
});

test("disabled, missing or failing cmc means no suggestion and no error", async () => {
  const off = stub([{ code: 0, stdout: json("x"), stderr: "" }], { enabled: false });
  assert.equal(await off.completer.complete("/r", "Fix"), undefined);
  assert.equal(off.calls.length, 0);
  const missing = stub([{ code: null, stdout: "", stderr: "", missing: true }]);
  assert.equal(await missing.completer.complete("/r", "Fix"), undefined);
  assert.equal(await missing.completer.complete("/r", "Fix"), undefined);
  assert.equal(missing.calls.length, 1); // not tried again right away
  const failing = stub([{ code: 1, stdout: "", stderr: "cmc: error: x" }, { code: 0, stdout: "not json", stderr: "" }]);
  assert.equal(await failing.completer.complete("/r", "Fix"), undefined);
  assert.equal(await failing.completer.complete("/r", "Fix"), undefined);
  const disabledRepo = stub([{ code: 0, stdout: JSON.stringify({ candidates: [], disabled: true }), stderr: "" }]);
  assert.equal(await disabledRepo.completer.complete("/r", "Fix"), undefined);
});

test("a reply overtaken by a newer keystroke is dropped", async () => {
  let release: (r: RunResult) => void = () => {};
  const calls: string[] = [];
  const completer = new Completer(
    (_cmd, args) => {
      calls.push(args[6]);
      return calls.length === 1
        ? new Promise<RunResult>((resolve) => (release = resolve))
        : Promise.resolve({ code: 0, stdout: json("ix it"), stderr: "" });
    },
    () => ({ enabled: true, path: "cmc", timeoutMs: 1000 }),
  );
  const slow = completer.complete("/r", "F");
  assert.equal(await completer.complete("/r", "Fix"), "ix it");
  release({ code: 0, stdout: json("old"), stderr: "" });
  assert.equal(await slow, undefined);
});

test("a suggestion says whether the model wrote it or which earlier commit it is", async () => {
  const recalled = JSON.stringify({
    prefix: "Bump",
    candidates: [{ message: "Bump version to 2.1", continuation: " version to 2.1", score: -1, source: "memory", commit: "1a2b3c4", date: "2026-11-30" }],
  });
  const { completer } = stub([
    { code: 0, stdout: recalled, stderr: "" },
    { code: 0, stdout: json("rser crash"), stderr: "" },
  ]);
  const memory = await completer.suggest("/r", "Bump");
  assert.deepEqual(memory, { text: " version to 2.1", source: "memory", commit: "1a2b3c4", date: "2026-11-30" });
  assert.match(describeSource(memory!), /earlier message \(commit 1a2b3c4 of 2026-11-30\)/);
  const model = await completer.suggest("/r", "Fix pa");
  assert.deepEqual(model, { text: "rser crash", source: "model" });
  assert.match(describeSource(model!), /model/);
});

test("cmc missing is reported through one callback, not on every keystroke", async () => {
  let t = 0;
  const reported: string[] = [];
  const completer = new Completer(
    async () => ({ code: null, stdout: "", stderr: "", missing: true }),
    () => ({ enabled: true, path: "/opt/cmc", timeoutMs: 1000 }),
    () => t,
    (path) => reported.push(missingMessage(path)),
  );
  for (let i = 0; i < 5; i++) {
    assert.equal(await completer.complete("/r", "Fix"), undefined);
  }
  assert.equal(reported.length, 1);
  assert.equal(reported[0].split("\n").length, 1);
  assert.match(reported[0], /"\/opt\/cmc" was not found/);
  t += 61_000; // a minute later it looks again (cmc may have been installed meanwhile)
  await completer.complete("/r", "Fix");
  assert.equal(reported.length, 2);
});

test("a failing cmc stays quiet in the box and gives its reason to the log", async () => {
  const lines: string[] = [];
  const completer = new Completer(
    async () => ({ code: 2, stdout: "", stderr: "Traceback...\ncmc: error: not a git repository: /r\n" }),
    () => ({ enabled: true, path: "cmc", timeoutMs: 1000 }),
    Date.now,
    () => {},
    (line) => lines.push(line),
  );
  assert.equal(await completer.complete("/r", "Fix"), undefined);
  assert.deepEqual(lines, ["cmc complete failed: cmc: error: not a git repository: /r"]);
});

test("cmc is looked up in PATH, then where pipx puts it; a path is taken as it is", () => {
  const present = new Set(["/venv/bin/cmc", "/home/me/.local/bin/cmc", "/opt/cmc"]);
  const has = (p: string) => present.has(p);
  assert.equal(findExecutable("cmc", "/usr/bin:/venv/bin", "/home/me", has), "/venv/bin/cmc");
  assert.equal(findExecutable("cmc", "/usr/bin:/bin", "/home/me", has), "/home/me/.local/bin/cmc");
  assert.equal(findExecutable("cmc", "/usr/bin", "/home/you", has), undefined);
  assert.equal(findExecutable("/opt/cmc", "", "/home/you", has), "/opt/cmc");
  assert.equal(findExecutable("/opt/none", "/venv/bin", "/home/me", has), undefined);
});
