"""Serving the gateway with uvicorn (uvloop event loop, httptools parser, bounded by
``custos.http.protocol``).

uvicorn was chosen by measurement (bench/README.md) and because it runs in this process, so the
gateway owns its signals (SIGHUP reloads the config) and its shutdown: in-flight requests are
given ``GRACEFUL_SHUTDOWN_S`` to finish.

``serve`` runs one gateway in this process; ``custos.server.workers`` runs several, each a full
replica in a process of its own, on one listening socket (``custos serve --workers N``).
"""

from __future__ import annotations

from pathlib import Path

import uvicorn

from custos.gateway import Gateway
from custos.http.app import GatewayApp
from custos.http.protocol import HttpLimits, bounded_protocol

GRACEFUL_SHUTDOWN_S = 30


def serve(
    config_path: str | Path,
    *,
    host: str | None,
    port: int | None,
    watch: bool = True,
    gateway_class: type[Gateway] = Gateway,
) -> int:
    """Serve until SIGINT/SIGTERM. ``gateway_class`` lets the benchmark serve a gateway with a
    stage switched off (bench/variant.py); the ``custos serve`` command never passes it."""
    gateway = gateway_class.from_file(config_path, watch=watch)
    server = uvicorn.Server(uvicorn_config(gateway, host, port))
    server.run()
    return 0 if server.started else 1


def uvicorn_config(gateway: Gateway, host: str | None, port: int | None) -> uvicorn.Config:
    """How uvicorn serves ``gateway``; ``host``/``port`` override ``gateway.listen``."""
    settings = gateway.runtime.config.gateway
    app = GatewayApp(gateway)
    limits = HttpLimits(
        settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s
    )
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        loop="uvloop",
        http=bounded_protocol(limits),  # httptools, with bounds on heads and bodies
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=30,
    )
