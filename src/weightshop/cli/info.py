from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded


@guarded
def info(
    model: str = typer.Argument(..., help="Diffusers directory, transformer .safetensors, hub id or built-in name."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ (single-file models)."),
    checkpoint: str = typer.Option(None, help="raw or turbo (default: detected)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Describe a Krea 2 model from its configs and headers (no weights loaded)."""
    from weightshop.models.info import describe

    result = describe(model, components, checkpoint)
    emit(result, as_json)
    if not as_json:
        table = Table(title=f"{result['name']} ({result['checkpoint']}, {result['layout']})", show_header=False)
        table.add_row("transformer parameters", f"{result['transformer_parameters']:,}")
        table.add_row("transformer size", f"{result['transformer_bytes'] / 2**30:.3f} GiB")
        for key in ("num_layers", "attention_head_dim", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "text_hidden_dim", "num_text_layers"):
            table.add_row(key, str(result["transformer_config"][key]))
        table.add_row("VAE", f"z {result['vae']['z_dim']}, f{result['vae']['scale_factor']}")
        te = result["text_encoder"]
        table.add_row("text encoder", f"{te['layers']} layers x {te['hidden_size']}, taps {te['select_layers']}")
        table.add_row("image sides", f"multiples of {result['size_multiple']}, default {result['default_size']}")
        p = result["preset"]
        table.add_row("preset", f"{p['steps']} steps, guidance {p['guidance']}, mu {p['mu']:.3f} ({p['mu_rule']})")
        q = result.get("quantization")
        if q:
            formats = ", ".join(f"{n} x {k}" for k, n in q["formats"].items())
            table.add_row("quantized", f"{q['container']}: {q['quantized_layers']} layers ({formats}); "
                                       f"{len(q['kept'])} Linears kept in high precision")
            if q.get("keep_patterns"):
                table.add_row("keep patterns", ", ".join(q["keep_patterns"]))
        console.print(table)
