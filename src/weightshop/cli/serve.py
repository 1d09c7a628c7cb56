from __future__ import annotations

from pathlib import Path

import typer

from weightshop.cli.common import DEVICE_HELP, console, guarded, resolve_device


@guarded
def serve(
    model: str = typer.Option("krea2-nano-turbo", "--model", "-m", help="Diffusers dir, transformer file, hub id "
                              "or built-in name."),
    checkpoint: str = typer.Option(None, help="raw or turbo: picks the sampler preset (default: detected)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for a single file."),
    lora_dir: Path = typer.Option(None, help="Directory of *.safetensors LoRAs, offered to clients by file stem."),
    data_dir: Path = typer.Option(Path("weightshop-out/serve"), help="Job store (jobs.sqlite3) and results/."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it: set API keys first)."),
    port: int = typer.Option(8000, help="Port (0: any free port)."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}; comma-separated for one worker per device."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    offload: str = typer.Option("none", help="none, model or sequential."),
    max_queue: int = typer.Option(64, help="Jobs queued or running before new ones get 429 + Retry-After."),
    max_batch: int = typer.Option(8, help="Images per forward pass across compatible jobs."),
    max_n: int = typer.Option(4, help="Images per request."),
    max_side: int = typer.Option(1024, help="Largest width or height, in pixels."),
    max_steps: int = typer.Option(64, help="Most sampling steps a request may ask for."),
    dollars_per_hour: float = typer.Option(0.0, help="What one device costs per hour: gives the cost per image."),
    rate_per_minute: float = typer.Option(120.0, help="Submissions per API key per minute."),
    api_keys_file: Path = typer.Option(None, help="YAML/JSON mapping key name -> sha256 of the key (see "
                                       "--hash-key); keys in WEIGHTSHOP_API_KEYS (name:key,...) are added."),
    hash_key: str = typer.Option(None, help="Print the sha256 of this key (for --api-keys-file) and exit."),
    warmup: bool = typer.Option(False, help="Render one small image per worker before serving."),
    ray: bool = typer.Option(False, "--ray", help="Render on Ray Serve replicas (the `ray` extra): one per GPU of "
                             "the cluster, or --ray-replicas on CPU; the job store stays in this process."),
    ray_address: str = typer.Option(None, help="With --ray: a running Ray cluster (auto, or host:port); default: "
                                    "a local Ray on 127.0.0.1."),
    ray_replicas: int = typer.Option(0, help="With --ray: replicas to run (0: one per GPU, or 1 on CPU)."),
    ray_cpus: float = typer.Option(1.0, help="With --ray: CPUs each replica reserves."),
) -> None:
    """Serve the model over HTTP: an OpenAI-compatible images API, durable jobs, LoRAs by name, a web page."""
    from weightshop.serve.config import ServeConfig, hash_key as sha256_of_key

    if hash_key is not None:
        typer.echo(sha256_of_key(hash_key))
        return
    if ray:
        from weightshop.serve.ray_app import require_ray

        require_ray()  # a clear error before anything starts when the extra is missing
    config = ServeConfig(model=model, checkpoint=checkpoint, components=components, lora_dir=lora_dir,
                         data_dir=data_dir, devices=[resolve_device(d) for d in device.split(",")], dtype=dtype,
                         offload=offload, max_queue=max_queue, max_batch=max_batch, max_n=max_n, max_side=max_side,
                         max_steps=max_steps, dollars_per_hour=dollars_per_hour, rate_per_minute=rate_per_minute,
                         warmup=warmup, ray=ray, ray_address=ray_address, ray_replicas=ray_replicas,
                         ray_cpus_per_replica=ray_cpus)
    if api_keys_file is not None:
        config.keys_from_file(api_keys_file)
    config.keys_from_env()
    if config.open_access and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] no API key configured and listening on {host}: anyone who reaches it "
                      "can generate", highlight=False)
    through = " through Ray Serve replicas" if ray else ""
    console.print(f"serving {model}{through} on http://{host}:{port} (page at /, API docs at /docs)", highlight=False)
    from weightshop.serve.server import serve_forever

    serve_forever(config, host, port)
