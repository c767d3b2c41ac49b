"""wrk as the load generator: the Lua script that drives it and the run that reads its
summary.

The script (also what ``corral wrk-script`` prints) posts the model's bodies in turn,
counts answers by status in each wrk thread, and at the end prints one JSON line::

    {"summary": "corral-wrk/1", "requests": N, "duration_us": N, "bytes": N,
     "statuses": {"200": N, ...},
     "errors": {"connect": N, "read": N, "write": N, "status": N, "timeout": N},
     "latency_us": {"min": N, "mean": N, "stdev": N, "max": N,
                    "percentiles": [[percent, us], ...]}}

wrk is a closed-loop generator (each connection waits for its answer): it has no rate
control, so open-loop runs use the built-in generator.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .results import PERCENT_POINTS
from .target import GeneratorError

SUMMARY = "corral-wrk/1"

_TEMPLATE = """\
-- wrk script for Corral model {model!s}, written by `corral wrk-script`.
-- Posts valid inputs to {path!s} in turn; prints a JSON summary at the end.
--   wrk -t2 -c16 -d30s --latency -s THIS_FILE http://127.0.0.1:8000
-- (the path is in the script: give wrk the server's base URL).

local path = {path_lua}
local bodies = {{
{bodies}
}}
local requests = {{}}
local next_request = 0
statuses = {{}}  -- global: read from every thread in done()

function init(args)
  local headers = {{["Content-Type"] = "application/json"}}
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", path, headers, body)
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end

local points = {{{points}}}

function done(summary, latency, requests)
  local merged = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {{}}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local pcts = {{}}
  for _, p in ipairs(points) do
    local value = latency:percentile(tonumber(p))
    if tonumber(p) == 0 then value = latency.min end  -- wrk's ends are not exact:
    if tonumber(p) == 100 then value = latency.max end  -- take its min and max there
    table.insert(pcts, string.format("[%s,%d]", p, value))
  end
  local e = summary.errors
  io.write(string.format(
    '{{"summary":"{summary}","requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"statuses":{{%s}},' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"percentiles":[%s]}}}}\\n',
    summary.requests, summary.duration, summary.bytes, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max, table.concat(pcts, ",")))
end
"""


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal (any bytes, escaped)."""
    out = ['"']
    for byte in data:
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def wrk_script(model: str, path: str, bodies: list[bytes]) -> str:
    """The Lua script for wrk that posts ``bodies`` to ``path`` in turn."""
    return _TEMPLATE.format(
        model=model.replace("\n", " "), path=path, path_lua=lua_string(path.encode()),
        bodies="\n".join(f"  {lua_string(b)}," for b in bodies),
        points=", ".join(f'"{p:g}"' for p in PERCENT_POINTS), summary=SUMMARY)


def wrk_version() -> str | None:
    """wrk's version line, or None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10,
                         check=False)
    return (out.stdout + out.stderr).split(" Copyright")[0].replace("wrk ", "", 1).strip()


def run_wrk(script: Path, base_url: str, connections: int, duration: float, threads: int,
            timeout: float) -> dict[str, Any]:
    """One wrk run; its JSON summary. RuntimeError with wrk's output when it gives none."""
    cmd = ["wrk", "-t", str(max(1, min(threads, connections))), "-c", str(connections),
           "-d", f"{max(1, round(duration))}s", "--timeout", f"{max(1, round(timeout))}s",
           "-s", str(script), base_url]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=duration + timeout + 60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GeneratorError(f"wrk did not run: {exc}") from None
    for line in out.stdout.splitlines():
        if line.startswith('{"summary":"' + SUMMARY):
            summary: dict[str, Any] = json.loads(line)
            return summary
    raise GeneratorError(f"wrk gave no summary (exit {out.returncode}): "
                       f"{(out.stderr or out.stdout).strip()[-500:]}")
