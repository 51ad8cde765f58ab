import { execFile } from "node:child_process";
import * as vscode from "vscode";
import { Completer, RunResult, repoRootOf, typedBefore } from "./logic";

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : null) : 0;
      resolve({ code, stdout, stderr, missing: error?.code === "ENOENT" });
    });
  });
}

export function activate(context: vscode.ExtensionContext): void {
  const completer = new Completer(run, () => {
    const cfg = vscode.workspace.getConfiguration("cmc");
    return {
      enabled: cfg.get<boolean>("enabled", true),
      path: cfg.get<string>("path", "cmc"),
      timeoutMs: cfg.get<number>("timeoutMs", 8000),
    };
  });
  const provider: vscode.InlineCompletionItemProvider = {
    async provideInlineCompletionItems(document, position) {
      const root = repoRootOf(document.uri);
      if (!root) {
        return undefined;
      }
      const typed = typedBefore(document.getText(), document.offsetAt(position));
      const rest = await completer.complete(root, typed);
      return rest ? [new vscode.InlineCompletionItem(rest, new vscode.Range(position, position))] : undefined;
    },
  };
  context.subscriptions.push(
    vscode.languages.registerInlineCompletionItemProvider({ language: "scminput" }, provider),
  );
}

export function deactivate(): void {}
