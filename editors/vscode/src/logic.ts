// What the extension does, without the editor: tested under `node --test` against a stub of the
// VS Code API (src/test). extension.ts only wires it to VS Code.

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  missing?: boolean; // the executable was not found
}

export type Runner = (cmd: string, args: string[], cwd: string, timeoutMs: number) => Promise<RunResult>;

export interface Settings {
  enabled: boolean;
  path: string;
  timeoutMs: number;
}

/** The repository of a Source Control input box: its document URI carries `rootUri` in the query
 *  (`vscode-scm:git/scm0/input?rootUri=file%3A%2F%2F%2Fhome%2Fme%2Frepo`). */
export function repoRootOf(uri: { scheme: string; query: string; fsPath?: string }): string | undefined {
  if (uri.scheme !== "vscode-scm") {
    return undefined;
  }
  const root = new URLSearchParams(uri.query).get("rootUri");
  if (!root || !root.startsWith("file://")) {
    return undefined;
  }
  return decodeURIComponent(new URL(root).pathname);
}

/** The message typed before the cursor (comment lines left out, as git will). */
export function typedBefore(text: string, offset: number): string {
  return text
    .slice(0, offset)
    .split("\n")
    .filter((line) => !line.startsWith("#"))
    .join("\n");
}

/** Asks `cmc complete --json` (which uses the warm daemon when it runs) for the continuation. */
export class Completer {
  private missingUntil = 0;
  private latest = 0;

  constructor(
    private readonly run: Runner,
    private readonly settings: () => Settings,
    private readonly now: () => number = Date.now,
  ) {}

  /** The rest of the current line after `typed`, or undefined (disabled, cmc missing, nothing). */
  async complete(root: string, typed: string): Promise<string | undefined> {
    const s = this.settings();
    if (!s.enabled || this.now() < this.missingUntil) {
      return undefined;
    }
    const ticket = ++this.latest;
    const args = ["complete", "--json", "--respect-enabled", "--repo", root, "--prefix", typed,
      "-n", "1", "--beams", "1", "--max-new-tokens", "12"];
    const result = await this.run(s.path, args, root, s.timeoutMs);
    if (result.missing) {
      this.missingUntil = this.now() + 60_000; // not installed: do nothing, and don't keep trying
      return undefined;
    }
    if (ticket !== this.latest || result.code !== 0) {
      return undefined; // a newer keystroke superseded this one, or cmc failed: stay quiet
    }
    try {
      const data = JSON.parse(result.stdout);
      const first = data.candidates?.[0]?.continuation;
      if (typeof first !== "string") {
        return undefined;
      }
      const line = first.split("\n")[0];
      return line.length > 0 ? line : undefined;
    } catch {
      return undefined;
    }
  }
}
