import assert from "node:assert/strict";
import { test } from "node:test";
import { Completer, RunResult, Settings, repoRootOf, typedBefore } from "../logic";

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
