"""Run the simulator: in a background thread for tests, or in the foreground for a process."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from gitlab_sim.app import create_app
from gitlab_sim.generate import generate_world
from gitlab_sim.world import World


def _uvicorn_config(world: World, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(world),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        # Slow faults keep requests sleeping; do not let them hold up shutdown for long.
        timeout_graceful_shutdown=1,
    )


class SimulatorServer:
    """The simulator on 127.0.0.1 and a free port, served from a daemon thread.

        with SimulatorServer(seed=7, issues=50) as sim:
            httpx.get(f"{sim.url}/api/v4/user", headers={"PRIVATE-TOKEN": sim.token("user1")})

    Pass a ready `world`, or keyword arguments for `generate_world` (seed, users, projects,
    issues, merge_requests, notes, days, big_project_issues, ...).
    """

    def __init__(
        self,
        world: World | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        **generate_kwargs: Any,
    ) -> None:
        if world is not None and generate_kwargs:
            raise TypeError("pass either a world or generate_world arguments, not both")
        self.world = world if world is not None else generate_world(**generate_kwargs)
        self.host = host
        self._port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234 (the GitLab instance URL for clients)."""
        return f"http://{self.host}:{self._port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    def token(self, username: str) -> str:
        """A user's personal access token."""
        return self.world.personal_token(username)

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        self._sock = sock
        self.world.base_url = self.url
        self._server = uvicorn.Server(
            _uvicorn_config(self.world, self.host, self._port, self._log_level)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="gitlab-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the GitLab simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(
    world: World,
    *,
    host: str = "127.0.0.1",
    port: int = 8929,
    log_level: str = "info",
    base_url: str | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), for `gitlab-sim serve`."""
    world.base_url = (base_url or f"http://{host}:{port}").rstrip("/")
    uvicorn.Server(_uvicorn_config(world, host, port, log_level)).run()
