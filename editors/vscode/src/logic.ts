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

/** A continuation to show, and where it came from. */
export interface Suggestion {
  text: string; // the rest of the current line
  source: "model" | "memory";
  commit?: string; // memory: the earlier commit whose message this is
  date?: string;
}

/** One line that says where a suggestion came from (the status bar item and its hover). */
export function describeSource(s: Suggestion): string {
  if (s.source === "memory" && s.commit) {
    return `cmc: this repository's earlier message (commit ${s.commit}${s.date ? " of " + s.date : ""})`;
  }
  return "cmc: written by cmc's model from the staged change and your history";
}

/** The executable a setting names: a path as it is; a bare name looked up in PATH, then in
 *  ~/.local/bin, where pipx installs (VS Code's server may run extensions with a login shell's
 *  PATH, which lacks an activated virtual environment and often ~/.local/bin). Undefined: none. */
export function findExecutable(
  name: string,
  pathEnv: string,
  home: string,
  isExecutable: (path: string) => boolean,
): string | undefined {
  if (name.includes("/")) {
    return isExecutable(name) ? name : undefined;
  }
  const dirs = pathEnv.split(":").filter((d) => d.length > 0);
  dirs.push(`${home}/.local/bin`);
  return dirs.map((d) => `${d}/${name}`).find(isExecutable);
}

/** The one line shown once when the cmc executable cannot be found. */
export function missingMessage(path: string): string {
  return `cmc: "${path}" was not found; install cmc or set the cmc.path setting to its full path.`;
}

/** Asks `cmc complete --json` (which uses the warm daemon when it runs) for the continuation. */
export class Completer {
  private missingUntil = 0;
  private latest = 0;

  constructor(
    private readonly run: Runner,
    private readonly settings: () => Settings,
    private readonly now: () => number = Date.now,
    private readonly onMissing: (path: string) => void = () => {},
    private readonly onError: (line: string) => void = () => {},
  ) {}

  /** The rest of the current line after `typed`, or undefined (disabled, cmc missing, nothing). */
  async complete(root: string, typed: string): Promise<string | undefined> {
    return (await this.suggest(root, typed))?.text;
  }

  /** The continuation with where it came from, or undefined. */
  async suggest(root: string, typed: string): Promise<Suggestion | undefined> {
    const s = this.settings();
    if (!s.enabled || this.now() < this.missingUntil) {
      return undefined;
    }
    const ticket = ++this.latest;
    const args = ["complete", "--json", "--respect-enabled", "--repo", root, "--prefix", typed,
      "-n", "1", "--beams", "1", "--max-new-tokens", "12"];
    const result = await this.run(s.path, args, root, s.timeoutMs);
    if (result.missing) {
      this.missingUntil = this.now() + 60_000; // not installed: say so once, and don't keep trying
      this.onMissing(s.path);
      return undefined;
    }
    if (ticket !== this.latest) {
      return undefined; // a newer keystroke superseded this one
    }
    if (result.code !== 0) {
      // cmc failed: no suggestion, no dialog; its one-line reason goes to the log
      const reason = result.stderr.trim().split("\n").pop() || `exit code ${result.code}`;
      this.onError(`cmc complete failed: ${reason}`);
      return undefined;
    }
    try {
      const data = JSON.parse(result.stdout);
      const best = data.candidates?.[0];
      if (typeof best?.continuation !== "string") {
        return undefined;
      }
      const line = best.continuation.split("\n")[0];
      if (line.length === 0) {
        return undefined;
      }
      const memory = best.source === "memory" && typeof best.commit === "string";
      return memory
        ? { text: line, source: "memory", commit: best.commit, date: typeof best.date === "string" ? best.date : undefined }
        : { text: line, source: "model" };
    } catch {
      return undefined;
    }
  }
}
