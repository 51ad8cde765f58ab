"""The editor set-ups of docs/editors.md, run in the real editors where they are installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cmc_env
from test_interactive import staged_repo

ROOT = Path(__file__).resolve().parent.parent

# Types into the buffer, asks the language server for completion, writes the items, quits.
DRIVE = """
local out = os.getenv("CMC_TEST_OUT")
local function finish(text)
  local f = io.open(out, "w"); f:write(text); f:close(); vim.cmd("qa!")
end
local function ready()
  local clients = vim.lsp.get_active_clients()
  return #clients > 0 and clients[1].initialized
end
if not vim.wait(180000, ready, 100) then finish("no language server attached") return end
vim.api.nvim_buf_set_lines(0, 0, 1, false, { "Fix parser cr" })
local params = vim.lsp.util.make_position_params()
params.position = { line = 0, character = 13 }
local result = vim.lsp.buf_request_sync(0, "textDocument/completion", params, 180000)
local items = {}
for _, res in pairs(result or {}) do
  local r = res.result or {}
  for _, item in ipairs(r.items or r) do
    table.insert(items, item.textEdit and item.textEdit.newText or item.label)
  end
end
finish(table.concat(items, "\\n"))
"""


def readme_block(after: str) -> str:
    text = (ROOT / "docs" / "editors.md").read_text()
    start = text.index(after)
    return re.search(r"```lua\n(.*?)```", text[start:], re.S).group(1)


def nvim_version() -> tuple[int, int]:
    out = subprocess.run(["nvim", "--version"], capture_output=True, text=True).stdout
    major, minor = re.search(r"NVIM v(\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nvim") is None, reason="Neovim is not installed (apt-get install neovim)"
)
@pytest.mark.parametrize("setup", ["Neovim 0.7–0.10", "Neovim 0.11+"])
def test_neovim_completes_from_the_readme_setup(tmp_path: Path, tiny_model: Path, setup: str):
    if setup == "Neovim 0.11+" and nvim_version() < (0, 11):
        pytest.skip(f"this Neovim is {nvim_version()}: the 0.11 set-up needs 0.11")
    repo = staged_repo(tmp_path / "repo", tiny_model)
    init = tmp_path / "init.lua"
    init.write_text(readme_block(setup))
    drive = tmp_path / "drive.lua"
    drive.write_text(DRIVE)
    message = repo / ".git" / "COMMIT_EDITMSG"
    message.write_text("\n# Please enter the commit message for your changes.\n")
    out = tmp_path / "items.txt"
    env = cmc_env({"CMC_TEST_OUT": str(out), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
                   "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_STATE_HOME": str(tmp_path / "state")})  # fmt: skip
    result = subprocess.run(
        ["nvim", "--headless", "-u", str(init), "-c", f"luafile {drive}", str(message)],
        cwd=repo, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert out.exists(), result.stderr[-2000:]
    assert "crash on empty configuration files" in out.read_text(), out.read_text()
    assert os.path.getsize(message) > 0
