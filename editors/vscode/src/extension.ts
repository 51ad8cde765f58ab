import { execFile } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { homedir } from "node:os";
import * as vscode from "vscode";
import {
  Completer,
  RunResult,
  describeSource,
  findExecutable,
  missingMessage,
  repoRootOf,
  typedBefore,
} from "./logic";

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<RunResult> {
  const found = findExecutable(cmd, process.env.PATH ?? "", homedir(), executable);
  if (!found) {
    return Promise.resolve({ code: null, stdout: "", stderr: "", missing: true });
  }
  return new Promise((resolve) => {
    execFile(found, args, { cwd, timeout: timeoutMs, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : null) : 0;
      resolve({ code, stdout, stderr, missing: error?.code === "ENOENT" });
    });
  });
}

// The Source Control message box: older VS Code gives its document the `scminput` language, and
// every version the `vscode-scm` scheme; one provider for both is asked once per document.
const SCM_INPUT: vscode.DocumentSelector = [{ language: "scminput" }, { scheme: "vscode-scm" }];

export function activate(context: vscode.ExtensionContext): void {
  // What the extension asked and got, one line each ("Output > cmc"; its file is in the logs folder).
  const log = vscode.window.createOutputChannel("cmc", { log: true });
  let warned = false;
  const completer = new Completer(
    run,
    () => {
      const cfg = vscode.workspace.getConfiguration("cmc");
      return {
        enabled: cfg.get<boolean>("enabled", true),
        path: cfg.get<string>("path", "cmc"),
        timeoutMs: cfg.get<number>("timeoutMs", 8000),
      };
    },
    Date.now,
    (path) => {
      if (!warned) {
        warned = true; // one line, once a window: never a dialog per keystroke
        log.warn(`${missingMessage(path)} (PATH: ${process.env.PATH ?? ""})`);
        void vscode.window.showWarningMessage(missingMessage(path));
      }
    },
    (line) => log.warn(line),
  );

  // Where the suggestion on screen came from: a status bar item whose hover says it.
  const origin = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 0);
  origin.name = "cmc suggestion source";
  origin.command = "cmc.suggest";

  const provider: vscode.InlineCompletionItemProvider = {
    async provideInlineCompletionItems(document, position) {
      const root = repoRootOf(document.uri);
      if (!root) {
        log.debug(`not a Source Control box of a local repository: ${document.uri.toString()}`);
        return undefined;
      }
      const typed = typedBefore(document.getText(), document.offsetAt(position));
      const started = Date.now();
      const suggestion = await completer.suggest(root, typed);
      const ms = Date.now() - started;
      // what was typed and suggested only at the debug level: a log is no place for messages
      log.info(`${root}: ${typed.length} typed -> ${suggestion ? suggestion.text.length + " from the " + suggestion.source : "nothing"} in ${ms} ms`);
      log.debug(`${JSON.stringify(typed)} -> ${JSON.stringify(suggestion?.text ?? "")}`);
      if (!suggestion) {
        origin.hide();
        return undefined;
      }
      origin.text = suggestion.source === "memory" ? `$(history) cmc ${suggestion.commit}` : "$(sparkle) cmc";
      origin.tooltip = describeSource(suggestion);
      origin.show();
      return [new vscode.InlineCompletionItem(suggestion.text, new vscode.Range(position, position))];
    },
  };
  context.subscriptions.push(
    log,
    origin,
    vscode.languages.registerInlineCompletionItemProvider(SCM_INPUT, provider),
    vscode.commands.registerCommand("cmc.suggest", () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
    vscode.commands.registerCommand("cmc.toggle", async () => {
      const cfg = vscode.workspace.getConfiguration("cmc");
      const on = !cfg.get<boolean>("enabled", true);
      await cfg.update("enabled", on, vscode.ConfigurationTarget.Global);
      if (!on) {
        origin.hide();
      }
      void vscode.window.showInformationMessage(on ? "cmc: completions on" : "cmc: completions off");
    }),
  );
}

export function deactivate(): void {}
