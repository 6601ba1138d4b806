"""The Triton Inference Server bundled in nvidia-pytriton (Triton 2.51, with its Python backend),
run directly on a model repository: what `kiln serve`, `kiln bench-serve` and the tests start.

    with TritonServer(repo, models=["minilm-feature-extraction"]) as server:   # free ports, 127.0.0.1
        server.http_url, server.grpc_url, server.metrics_url

What running the bundled binary needs (measured on this project's machines):
- a backend directory python/ holding libtriton_python.so, triton_python_backend_utils.py and the
  stub built for this Python (python_backend_stubs/3.X/triton_python_backend_stub);
- LD_LIBRARY_PATH with this Python's own LIBDIR first (the stub links libpython3.X.so: without it
  a system libpython of another patch release loads beside this stdlib and models fail to load)
  and nvidia_pytriton.libs (libtritonserver, the stub's libcudart);
- this Python's bin/ first on PATH, so the stub's embedded interpreter finds this environment's
  site-packages (kiln, numpy < 2).
The server binds 127.0.0.1 unless told otherwise, and is stopped with SIGINT (Triton unloads the
models and exits in a few seconds), then SIGKILL to its process group if it does not.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError, KilnError, RuntimeFailure
from .repository import RepoOptions


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            "the Triton server is not installed: pip install 'kiln[serve]' (nvidia-pytriton==0.7.0 bundles it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def triton_paths() -> dict[str, Path]:
    """The bundled tritonserver binary, its Python backend, the stub for this Python, its libraries."""
    root = _pytriton_dir()
    tritonserver = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "binary": tritonserver / "bin" / "tritonserver",
        "backend": tritonserver / "backends" / "python",
        "stub": tritonserver / "python_backend_stubs" / version / "triton_python_backend_stub",
        "libs": root.parent / "nvidia_pytriton.libs",
    }
    missing = [f"{k} ({p})" for k, p in paths.items() if not p.exists()]
    if missing:
        raise BackendUnavailableError(
            f"the bundled Triton server is incomplete for Python {version}: missing {', '.join(missing)}; "
            "reinstall nvidia-pytriton==0.7.0"
        )
    return paths


def backend_directory(dest: Path) -> Path:
    """A --backend-directory with the Python backend and the stub matching this interpreter."""
    paths = triton_paths()
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(paths["backend"] / f, python / f)
    shutil.copy2(paths["stub"], python / "triton_python_backend_stub")
    return dest


def server_environment() -> dict[str, str]:
    """The environment the server and its Python stubs need (see the module's docstring)."""
    paths = triton_paths()
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [p for p in (libdir, str(paths["libs"]), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stop_with_parent() -> None:
    """In the server's process before exec: SIGTERM (Triton's clean shutdown) when the process
    that started it dies, even by SIGKILL, so that no server outlives kiln or a test run."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` TCP ports nothing listens on now (bound, read, released together)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_block(count: int, host: str = "127.0.0.1", tries: int = 100) -> int:
    """A first port P with P .. P + count - 1 all free (`kiln serve` takes port, port + 1, port + 2)."""
    for _ in range(tries):
        base = free_ports(1, host)[0]
        if base + count > 65536:
            continue
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ServerError(f"no {count} consecutive free ports found on {host}")


# Triton waits this long for in-flight requests at shutdown. A client that keeps a gRPC stream
# open to a decoupled (streaming) model holds that model in UNLOADING past it, and the server
# then logs "Exit timeout expired. Exiting immediately." without exiting: stop() kills it.
EXIT_TIMEOUT = 10


class ServerError(RuntimeFailure):
    """The server did not start, or a model did not load (the message holds its log's tail)."""


class TritonServer:
    """tritonserver on a model repository, bound to `host`, on free ports unless given."""

    def __init__(
        self,
        repository: str | Path,
        models: list[str] | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
        verbose: bool = False,
    ):
        self.repository = Path(repository).resolve()
        self.models = list(models) if models is not None else None
        self.host = host
        wanted = [http_port, grpc_port, metrics_port]
        spare = iter(free_ports(sum(p is None for p in wanted), host if host != "0.0.0.0" else "127.0.0.1"))
        self.http_port, self.grpc_port, self.metrics_port = (p if p is not None else next(spare) for p in wanted)
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-triton-")
        self.log_path = Path(log_file) if log_file else Path(self._tmp.name) / "tritonserver.log"
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.killed = False

    # --- addresses ----------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        paths = triton_paths()
        backends = backend_directory(Path(self._tmp.name) / "backends")
        cmd = [
            str(paths["binary"]),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={EXIT_TIMEOUT}",
            f"--log-verbose={1 if self.verbose else 0}",
        ]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models]
        return cmd

    # --- life ---------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> TritonServer:
        """Start the server and wait until it and every model are ready (ServerError otherwise)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            # its own session: Ctrl-C in a terminal reaches kiln, which stops the server in order
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                start_new_session=True,
                preexec_fn=_stop_with_parent,
            )
        finally:
            log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, b""

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} before it was ready; its log "
                    f"({self.log_path}) ends:\n{self.log_tail()}"
                )
            status, _ = self._get("/v2/health/ready")
            if status == 200:
                names = self.models if self.models is not None else [m["name"] for m in self.model_index()]
                if all(self._get(f"/v2/models/{n}/ready")[0] == 200 for n in names):
                    return
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver was not ready after {timeout:.0f} s; its log ({self.log_path}) ends:\n{self.log_tail()}"
        )

    def model_index(self) -> list[dict]:
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = EXIT_TIMEOUT + 5) -> int | None:
        """SIGINT (Triton unloads the models and exits), then, after `timeout`, SIGKILL to its
        process group (`killed` says whether it came to that). Returns the exit status."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGINT)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
        # the Python stubs are the server's children, in the session it leads
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(10)
        return p.returncode

    def close(self) -> None:
        """Stop, and remove the backend directory (and the log, unless it was given a path)."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- metrics ------------------------------------------------------------------------
    def metrics(self) -> dict[str, dict[str, float]]:
        """Prometheus metrics per model: {model: {metric name: value}} (version label dropped)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return parse_metrics(r.read().decode())


_METRIC = re.compile(r"^(nv_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if "model" not in labels:
            continue
        model = out.setdefault(labels["model"], {})
        model[m.group(1)] = model.get(m.group(1), 0.0) + float(m.group(3))
    return out


def serve(
    engine_dirs: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    options: RepoOptions | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """`kiln serve`: a repository of the engines' Python models in a temporary directory, the
    bundled server on it (HTTP `port`, gRPC port + 1, metrics port + 2), until Ctrl-C or SIGTERM."""
    from .repository import PYTHON_KINDS, write_repository

    opts = dataclasses.replace(options or RepoOptions(), kinds=PYTHON_KINDS)
    with tempfile.TemporaryDirectory(prefix="kiln-serve-") as tmp:
        repo = Path(tmp) / "models"
        written = write_repository(list(engine_dirs), repo, opts)
        names = [w.name for w in written]
        server = TritonServer(
            repo,
            models=names,
            host=host,
            http_port=port,
            grpc_port=port + 1,
            metrics_port=port + 2,
            log_file=Path(tmp) / "tritonserver.log",
        )
        say(f"starting Triton (the server bundled in nvidia-pytriton) with {len(names)} models ...")

        def terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        # SIGINT too: a shell starts background jobs with SIGINT ignored, and `kill -INT` should still stop it
        previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.start()
            say(f"HTTP     http://{server.http_url}   (KServe V2 / Open Inference Protocol)")
            say(f"gRPC     {server.grpc_url}")
            say(f"metrics  {server.metrics_url}")
            for w in written:
                say(f"model    {w.name:<40} {w.kind:<8} {', '.join(w.notes)}")
            text = next((w for w in written if w.kind == "text"), None)
            if text is not None:
                say("try:")
                say(f"  curl -s http://{server.http_url}/v2/models/{text.name}/infer -d '{_example_body(text)}'")
            say("Ctrl-C stops the server")
            while server.running():
                time.sleep(0.5)
            say(f"tritonserver exited with status {server.process.returncode if server.process else '?'}:")
            say(server.log_tail())
            return 1
        except KeyboardInterrupt:
            say("stopping ...")
            code = server.stop()
            if server.killed:
                say(
                    f"tritonserver had not exited {EXIT_TIMEOUT + 5} s after SIGINT (a client still holds a stream "
                    "open to a streaming model): killed"
                )
            else:
                say(f"stopped (tritonserver exit status {code})")
            return 0
        except KilnError:
            server.stop()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.close()


def _example_body(model: object) -> str:
    from .repository import WrittenModel

    assert isinstance(model, WrittenModel)
    if '"question"' in model.config:
        inputs = [
            {"name": "question", "shape": [1], "datatype": "BYTES", "data": ["Where was Marie Curie born?"]},
            {"name": "context", "shape": [1], "datatype": "BYTES", "data": ["Marie Curie was born in Warsaw."]},
        ]
    else:
        inputs = [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a cat on a mat", "a kitten on a rug"]}]
    return json.dumps({"inputs": inputs})
