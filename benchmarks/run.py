"""Corral against the stack users run today, in one run: ``python benchmarks/run.py``.

Starts, one after the other and alternating their order round by round:

* naive: a Flask app under Gunicorn gthread with the model loaded in every worker
  and one forward pass per request (benchmarks/naive_app.py);
* corral: ``corral serve benchmarks/corral_app.py`` (same model code), in one or
  more replica layouts for MiniLM;
* the ceiling (MiniLM only): the model's own throughput with no HTTP, full batches
  in one process with the replica's torch threads (benchmarks/ceiling.py);

and drives each server with wrk (benchmarks/post.lua) at each connection count.
Then, with 4 HTTP workers on each side, the memory (PSS) of both stacks and their
idle CPU. Writes docs/benchmarks.md and a JSON file with every measurement.

    python benchmarks/run.py --quick          # smoke run, about 3 minutes
    python benchmarks/run.py                  # full run, about 25 minutes

Every process this script starts is stopped by it (SIGTERM, then SIGKILL by pid
after 60 s); each server also gets SIGTERM if this script dies. Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
LUA = BENCH / "post.lua"
BODY = BENCH / "body.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = len(os.sched_getaffinity(0))
HOST = "127.0.0.1"

# Workload name -> the model's URL name in both stacks.
WORKLOADS = {"noop": "noop", "minilm": "embeddings"}
# Set on some processors for old OpenBLAS builds; they slow a current numpy.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- /proc ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat(pid) is None:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each live process, in clock ticks."""
    out = {}
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            out[pid] = int(fields[11]) + int(fields[12])
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, USS) of a process from /proc/PID/smaps_rollup; USS = Private_Clean + _Dirty."""
    pss = uss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                uss += int(line.split()[1])
    except OSError:
        pass
    return pss, uss


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def machine_busy_ticks() -> int:
    """Non-idle ticks of the whole machine (all CPUs), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(parts) - parts[3] - parts[4]  # minus idle and iowait


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal"))
    mem = f"{mem_kib / 1024 ** 2:.1f} GiB"
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines()
                  if ln.startswith("flags")), [])

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    versions = version([PY, "-c", (
        "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
        "('torch', 'sentence-transformers', 'flask', 'gunicorn', 'gevent', 'pydantic')))")])
    return {
        "nproc": os.cpu_count(), "usable_cpus": NCPU, "cpu_model": model,
        "avx512": "avx512f" in flags, "memory": mem, "kernel": platform.release(),
        "python": platform.python_version(), "packages": versions,
        "wrk": version(["wrk", "-v"]).split(" Copyright")[0],
    }


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_uncommitted_files": len(dirty.splitlines()) if dirty else 0}


# -- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_us() -> None:
    _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGTERM if run.py dies


def http(method: str, url: str, body: bytes | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Server:
    """One server process tree that this script started."""

    label: str
    kind: str  # "naive" or "corral"
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    workers: int
    proc: subprocess.Popen[bytes] | None = None
    known: set[int] = field(default_factory=set)
    started_s: float = 0.0

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float) -> None:
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_die_with_us)  # noqa: PLW1509 (no threads here)
        self._wait_ready(t0 + timeout)
        self.started_s = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} while "
                                   f"starting; see {self.log_path}")
            try:
                if self.kind == "corral":
                    status, _ = http("GET", self.base + "/readyz", timeout=5)
                    if status == 200:
                        return
                else:  # ready once every worker answered (each loads the model at import)
                    status, raw = http("GET", self.base + "/healthz", timeout=5)
                    if status == 200:
                        pids.add(json.loads(raw)["pid"])
                        if len(pids) >= self.workers:
                            return
                        continue
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} not ready in time; see {self.log_path}")

    def pids(self) -> list[int]:
        assert self.proc is not None
        found = descendants(self.proc.pid)
        self.known.update(found)
        return found

    def roles(self) -> dict[int, str]:
        """Each process of the tree and what it is."""
        assert self.proc is not None
        pids = self.pids()
        root = self.proc.pid
        out: dict[int, str] = {}
        master = None
        for pid in pids:
            cmd = cmdline(pid)
            if pid == root:
                out[pid] = "supervisor" if self.kind == "corral" else "gunicorn master"
            elif cmd.startswith("corral: replica"):  # process titles (corral.process.title)
                out[pid] = "replica"
            elif cmd.startswith("corral: dispatcher"):
                out[pid] = "dispatcher"
            elif cmd.startswith("corral: zygote"):
                out[pid] = "zygote"
            elif cmd.startswith("corral: jobs"):
                out[pid] = "jobs"
            elif cmd.startswith("gunicorn: master") and (_stat(pid) or ["", "0"])[1] == str(root):
                out[pid] = "gunicorn master"
                master = pid
        for pid in pids:
            if pid not in out:
                parent = int((_stat(pid) or ["", "0"])[1])
                out[pid] = ("http worker" if self.kind == "corral" and parent == master
                            else "worker" if self.kind == "naive" and parent == root else "other")
        return out

    def memory(self) -> dict[str, Any]:
        """PSS summed over every process of the tree, and PSS and USS by role (MiB)."""
        by_role: dict[str, list[tuple[float, float]]] = {}
        for pid, role in self.roles().items():
            pss, uss = memory_kib(pid)
            by_role.setdefault(role, []).append((pss / 1024, uss / 1024))
        return {"pss_mib": round(sum(p for v in by_role.values() for p, _ in v), 1),
                "uss_mib": round(sum(u for v in by_role.values() for _, u in v), 1),
                "by_role": {r: {"count": len(v), "pss_mib": round(sum(p for p, _ in v), 1),
                                "each_pss_mib": [round(p, 1) for p, _ in v],
                                "each_uss_mib": [round(u, 1) for _, u in v]}
                            for r, v in sorted(by_role.items())}}

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.pids()
        t0 = time.monotonic()
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # only the process this script started, by its pid
                self.proc.wait()
                killed = True
        took = time.monotonic() - t0
        time.sleep(0.5)
        left = [p for p in sorted(self.known) if _stat(p) is not None and _stat(p)[0] != "Z"]
        for pid in left:  # descendants of ours that outlived their parent
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        out = {"exit_code": self.proc.returncode, "stop_s": round(took, 2),
               "needed_sigkill": killed, "left_behind": left}
        self.proc = None
        return out


def corral_server(label: str, model: str, workers: int, replicas: int, threads: int,
                  env: dict[str, str], workdir: Path, extra: dict[str, str]) -> Server:
    port = free_port()
    env = dict(env, **extra)
    env = dict(env, BENCH_MODELS=model, BENCH_BATCH_DIR=str(workdir),
               EMBEDDINGS_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env[f"CORRAL_MODELS__{model.upper()}__REPLICAS"] = str(replicas)
    argv = [PY, "-m", "corral", "serve", str(BENCH / "corral_app.py"), "--host", HOST,
            "--port", str(port), "--workers", str(workers), "--log-level", "info"]
    return Server(label, "corral", argv, env, port, workdir / f"{_slug(label)}.log", workers)


def naive_server(label: str, model: str, workers: int, threads: int,
                 env: dict[str, str], workdir: Path) -> Server:
    port = free_port()
    torch_threads = naive_torch_threads(workers)
    env = dict(env, BENCH_MODELS=model, EMBEDDINGS_THREADS=str(torch_threads),
               OMP_NUM_THREADS=str(torch_threads))
    argv = [PY, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers),
            "--threads", str(threads), "--timeout", "120", "--bind", f"{HOST}:{port}",
            "--chdir", str(BENCH), "--pythonpath", str(BENCH), "naive_app:app"]
    return Server(label, "naive", argv, env, port, workdir / f"{_slug(label)}.log", workers)


def naive_torch_threads(workers: int) -> int:
    return max(1, NCPU // workers)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


# -- wrk --------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, duration: float, threads: int,
            env: dict[str, str]) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections),
           "-d", f"{max(1, round(duration))}s", "--timeout", "30s", "--latency",
           "-s", str(LUA), url]
    out = subprocess.run(cmd, env=dict(env, BENCH_BODY_FILE=str(BODY)), cwd=ROOT,
                         capture_output=True, text=True, timeout=duration + 90, check=False)
    if "post.lua" in out.stderr:  # wrk reports a script error and carries on without it
        raise RuntimeError(f"wrk could not run post.lua: {out.stderr.strip()}")
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])  # type: ignore[no-any-return]
    raise RuntimeError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n"
                       f"{out.stderr}")


def check_response(server: Server, path: str, workload: str) -> None:
    """One request by hand: the answer must be a 200 with the model's output."""
    status, raw = http("POST", server.base + path, BODY.read_bytes(), timeout=60)
    data = json.loads(raw) if status == 200 else None
    ok = (isinstance(data, dict) and (len(data.get("embedding", [])) == 384
                                       if workload == "minilm" else "length" in data))
    if not ok:
        raise RuntimeError(f"{server.label}: unexpected answer {status} {raw[:300]!r}")


def read_batches(workdir: Path, model: str, offset: int) -> tuple[Counter[int], int]:
    path = workdir / f"{model}.batches"
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return Counter(), offset
    sizes = Counter(int(x) for x in data.split())
    return sizes, offset + len(data)


def batch_offset(workdir: Path, model: str) -> int:
    try:
        return (workdir / f"{model}.batches").stat().st_size
    except FileNotFoundError:
        return 0


def measure(server: Server, workload: str, connections: int, duration: float,
            wrk_threads: int, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """One wrk run against a running server, with its server-side CPU and batch sizes."""
    model = WORKLOADS[workload]
    url = f"{server.base}/v1/models/{model}/predict"
    pids = server.pids()
    before = cpu_ticks(pids)
    offset = batch_offset(workdir, model)
    busy0, client0, t0 = machine_busy_ticks(), children_cpu_s(), time.monotonic()
    w = run_wrk(url, connections, duration, wrk_threads, env)
    busy1, client1, t1 = machine_busy_ticks(), children_cpu_s(), time.monotonic()
    after = cpu_ticks(server.pids())
    server_ticks = sum(v - before.get(pid, 0) for pid, v in after.items())
    elapsed = t1 - t0
    requests = w["requests"]
    e = w["errors"]
    result: dict[str, Any] = {
        "connections": connections,
        "requests": requests,
        "rps": requests / (w["duration_us"] / 1e6),
        "p50_ms": w["latency_us"]["p50"] / 1000,
        "p90_ms": w["latency_us"]["p90"] / 1000,
        "p99_ms": w["latency_us"]["p99"] / 1000,
        "max_ms": w["latency_us"]["max"] / 1000,
        "errors_non2xx": e["status"],
        "errors_socket": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "errors_detail": e,
        "server_cpu_s": server_ticks / CLK_TCK,
        "cpu_ms_per_req": server_ticks / CLK_TCK * 1000 / requests if requests else None,
        "server_cores": server_ticks / CLK_TCK / elapsed,
        "client_cores": (client1 - client0) / elapsed,
        # Everything else the machine did meanwhile (other jobs): the noise indicator.
        "other_cores": max(0.0, (busy1 - busy0) / CLK_TCK - server_ticks / CLK_TCK
                           - (client1 - client0)) / elapsed,
    }
    if server.kind == "corral":
        sizes, _ = read_batches(workdir, model, offset)
        calls = sum(sizes.values())
        result["batches"] = calls
        result["batch_mean"] = sum(k * v for k, v in sizes.items()) / calls if calls else None
        result["batch_max"] = max(sizes) if sizes else None
        result["batch_hist"] = {str(k): v for k, v in sorted(sizes.items())}
    else:
        result["batch_mean"] = 1.0  # one forward pass per request, by construction
        result["batch_max"] = 1
    return result


# -- the run ----------------------------------------------------------------------------


@dataclass
class Config:
    label: str
    kind: str  # naive, corral, ceiling
    replicas: int = 1
    threads: int = 0
    inline: bool = False  # placement = "inline": the model inside each HTTP worker
    worker_class: str = ""  # Corral's HTTP workers, when not the default (gthread)


def configs_for(workload: str, args: argparse.Namespace) -> list[Config]:
    out = [Config("naive", "naive")]
    if workload == "minilm":
        for layout in args.layouts:
            r, t = layout
            out.append(Config(f"corral {r}x{t}", "corral", r, t))
        out.append(Config("ceiling", "ceiling", 1, args.ceiling_threads))
    else:
        out.append(Config("corral", "corral", 1, 1))
        out.append(Config("corral gevent", "corral", 1, 1, worker_class="gevent"))
        out.append(Config("corral inline", "corral", 1, 1, inline=True))
        out.append(Config("corral inline gevent", "corral", 1, 1, inline=True,
                          worker_class="gevent"))
    return out


def run_ceiling(seconds: float, threads: int, env: dict[str, str]) -> dict[str, Any]:
    env = dict(env, EMBEDDINGS_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([PY, str(BENCH / "ceiling.py"), "--seconds", str(seconds)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ceiling.py failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_server_config(cfg: Config, workload: str, rnd: int, args: argparse.Namespace,
                      env: dict[str, str], workdir: Path, results: dict[str, Any]) -> None:
    model = WORKLOADS[workload]
    label = f"{workload} {cfg.label} r{rnd}"
    if cfg.kind == "naive":
        server = naive_server(label, model, args.naive_workers, args.naive_threads, env, workdir)
    else:
        extra = dict(args.corral_env)
        if cfg.inline:
            extra[f"CORRAL_MODELS__{model.upper()}__PLACEMENT"] = "inline"
        if cfg.worker_class:
            extra["CORRAL_WORKER_CLASS"] = cfg.worker_class
        server = corral_server(label, model, args.corral_workers, cfg.replicas,
                               cfg.threads or 1, env, workdir, extra)
    try:
        server.start(args.start_timeout)
        log(f"{label}: ready in {server.started_s:.1f}s on port {server.port}")
        check_response(server, f"/v1/models/{model}/predict", workload)
        url = f"{server.base}/v1/models/{model}/predict"
        run_wrk(url, max(args.connections), args.warmup, args.wrk_threads, env)
        for conns in args.connections:
            time.sleep(0.5)
            m = measure(server, workload, conns, args.duration, args.wrk_threads, env, workdir)
            m.update(workload=workload, config=cfg.label, round=rnd)
            results["runs"].append(m)
            log(f"  {conns:>3} conns: {m['rps']:8.1f} req/s  p50 {m['p50_ms']:7.1f} ms  "
                f"p99 {m['p99_ms']:7.1f} ms  err {m['errors_non2xx']}/{m['errors_socket']}  "
                f"cpu {m['cpu_ms_per_req']:.3f} ms/req  batch {m['batch_mean']:.1f}  "
                f"other {m['other_cores']:.2f} cores")
        mem = server.memory()
        mem.update(workload=workload, config=cfg.label, round=rnd, start_s=server.started_s)
        results["memory_runs"].append(mem)
        log(f"  PSS {mem['pss_mib']:.0f} MiB")
    finally:
        stopped = server.stop()
        if stopped:
            stopped.update(label=label)
            results["stops"].append(stopped)
            if stopped["left_behind"] or stopped["needed_sigkill"]:
                log(f"  WARNING: {label} stop: {stopped}")


def run_memory_phase(args: argparse.Namespace, env: dict[str, str], workdir: Path,
                     results: dict[str, Any]) -> None:
    """Both stacks with the same number of HTTP workers: PSS under load, then idle CPU."""
    w = args.memory_workers
    r, t = args.layouts[0]
    servers = [
        naive_server(f"memory naive {w}w", "embeddings", w, args.naive_threads, env, workdir),
        corral_server(f"memory corral {w}w {r}x{t}", "embeddings", w, r, t, env, workdir,
                      args.corral_env),
    ]
    for server in servers:
        try:
            server.start(args.start_timeout)
            log(f"{server.label}: ready in {server.started_s:.1f}s")
            url = f"{server.base}/v1/models/embeddings/predict"
            # Traffic through every worker, so each holds what it holds when serving.
            run_wrk(url, 16, args.memory_warmup, args.wrk_threads, env)
            time.sleep(3)  # let the last requests finish and the server settle
            mem = server.memory()
            pids = server.pids()
            before, t0 = cpu_ticks(pids), time.monotonic()
            time.sleep(args.idle_seconds)
            after, t1 = cpu_ticks(server.pids()), time.monotonic()
            ticks = sum(v - before.get(pid, 0) for pid, v in after.items())
            per_process = {server.roles().get(pid, "?") + f" {pid}": round(
                (v - before.get(pid, 0)) / CLK_TCK / (t1 - t0) * 100, 2)
                for pid, v in after.items()}
            idle = {"seconds": round(t1 - t0, 1),
                    "cpu_percent_of_one_core": ticks / CLK_TCK / (t1 - t0) * 100,
                    "per_process_percent": per_process}
            results["memory"][server.kind] = {"workers": w, "label": server.label,
                                              "start_s": server.started_s, **mem, "idle": idle}
            log(f"  PSS {mem['pss_mib']:.0f} MiB; idle CPU "
                f"{idle['cpu_percent_of_one_core']:.2f}% of a core over {idle['seconds']}s")
        finally:
            stopped = server.stop()
            if stopped:
                stopped.update(label=server.label)
                results["stops"].append(stopped)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Corral vs Flask+Gunicorn, and the model's ceiling.")
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating order (3)")
    p.add_argument("--connections", default="1,16,64", help="wrk connections (1,16,64)")
    p.add_argument("--workloads", default="noop,minilm", help="noop,minilm")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --duration 3 --rounds 1, shorter warm-ups")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                   help="Markdown report (docs/benchmarks.md)")
    p.add_argument("--json", default=str(BENCH / "results.json"),
                   help="every measurement (benchmarks/results.json)")
    p.add_argument("--layouts", default="1x2,2x1",
                   help="Corral MiniLM layouts, REPLICASxTORCH_THREADS; the first is the "
                        "headline (1x2,2x1)")
    p.add_argument("--ceiling-threads", type=int, default=2,
                   help="torch threads of the ceiling process (2, the headline replica's)")
    p.add_argument("--corral-workers", type=int, default=2, help="corral --workers (2)")
    p.add_argument("--naive-workers", type=int, default=2, help="naive Gunicorn workers (2)")
    p.add_argument("--naive-threads", type=int, default=4, help="naive gthread threads (4)")
    p.add_argument("--memory-workers", type=int, default=4,
                   help="HTTP workers of both stacks in the memory/idle phase (4)")
    p.add_argument("--idle-seconds", type=float, default=10, help="idle CPU window (10)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory/idle phase")
    p.add_argument("--corral-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the corral servers and the ceiling process, "
                        "e.g. OMP_WAIT_POLICY=PASSIVE (repeatable; default none)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up wrk seconds (3; quick 1)")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds to get ready")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3, 1
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.memory_warmup = 2 if args.quick else 5
    args.corral_env = dict(kv.split("=", 1) for kv in args.corral_env)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    layouts = []
    for item in args.layouts.split(","):
        r, _, t = item.strip().partition("x")
        layouts.append((int(r), int(t)))
    args.layouts = layouts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    env = os.environ.copy()
    unset = [v for v in OPENBLAS_VARS if v in env]
    for v in unset:
        del env[v]
    env["PYTHONUNBUFFERED"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["benchmarks/run.py", *(sys.argv[1:] if argv is None
                                                           else argv)])
    results: dict[str, Any] = {
        "command": command, "quick": args.quick,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(), "git": git_info(), "openblas_unset": unset,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
        "naive_torch_threads": naive_torch_threads(args.naive_workers),
        "memory_torch_threads": naive_torch_threads(args.memory_workers),
        "runs": [], "memory_runs": [], "ceiling": [], "memory": {}, "stops": [],
        "logs": str(workdir),
    }
    log(f"server logs and batch files in {workdir}")
    t_start = time.monotonic()
    try:
        for workload in args.workloads:
            configs = configs_for(workload, args)
            for rnd in range(args.rounds):
                k = rnd % len(configs)
                for cfg in configs[k:] + configs[:k]:  # a different order each round
                    if cfg.kind == "ceiling":
                        c = run_ceiling(args.duration, cfg.threads,
                                        dict(env, **args.corral_env))
                        c.update(round=rnd)
                        results["ceiling"].append(c)
                        log(f"minilm ceiling r{rnd}: {c['inputs_per_s']:.1f} inputs/s "
                            f"(batch {c['batch']}, {c['threads']} threads, "
                            f"{c['batch_ms_p50']:.0f} ms/batch median, "
                            f"other {c['other_cores']:.2f} cores)")
                    else:
                        run_server_config(cfg, workload, rnd, args, env, workdir, results)
        if "minilm" in args.workloads and not args.no_memory:
            run_memory_phase(args, env, workdir, results)
    finally:
        results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        log(f"wrote {args.json}")
    from report import write_report  # benchmarks/report.py

    Path(args.out).write_text(write_report(results))
    log(f"wrote {args.out} ({results['elapsed_s']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
