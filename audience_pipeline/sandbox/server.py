"""Run the sandbox: the Amazon Ads API emulator and AWS (moto) on loopback, each on its own port."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from werkzeug.serving import BaseWSGIServer, make_server

from audience_pipeline.sandbox.ads_api import AdsSandbox, create_app
from audience_pipeline.sandbox.aws import create_aws_app
from audience_pipeline.sandbox.config import SandboxConfig

DUMMY_AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "sandbox",
    "AWS_SECRET_ACCESS_KEY": "sandbox",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class RunningSandbox:
    """Both servers, started; `env()` says how to reach them, `stop()` ends them."""

    ads_url: str
    aws_url: str
    ads: AdsSandbox
    _servers: list[BaseWSGIServer] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"{self.ads_url}/auth/o2/token"

    @property
    def auth_url(self) -> str:
        return f"{self.ads_url}/ap/oa"

    def env(self) -> dict[str, str]:
        """The environment that points the pipeline (and boto3) at the sandbox."""
        return {
            "AMAZON_ADS_API_URL": self.ads_url,
            "AMAZON_ADS_TOKEN_URL": self.token_url,
            "AMAZON_ADS_AUTH_URL": self.auth_url,
            "AWS_ENDPOINT_URL": self.aws_url,
            **DUMMY_AWS_KEYS,
        }

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


def _serve(host: str, port: int, app: Callable) -> BaseWSGIServer:
    server = make_server(host, port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name=f"sandbox-{server.port}", daemon=True).start()
    return server


def start_sandbox(
    host: str = "127.0.0.1", ads_port: int = 0, aws_port: int = 0, config: SandboxConfig | None = None
) -> RunningSandbox:
    """Start both servers (port 0 picks a free one) and wait until both answer."""
    aws_server = _serve(host, aws_port, create_aws_app())
    aws_url = f"http://{host}:{aws_server.port}"
    config = (config or SandboxConfig()).model_copy(update={"aws_endpoint_url": aws_url})
    ads = AdsSandbox(config)
    ads_server = _serve(host, ads_port, create_app(ads))
    running = RunningSandbox(f"http://{host}:{ads_server.port}", aws_url, ads, [ads_server, aws_server])
    for url in (f"{running.ads_url}/_sandbox/journal", f"{aws_url}/_sandbox/journal"):
        _wait_until_ready(url)
    return running


def _wait_until_ready(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1).raise_for_status()
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
