"""The 16-bit base a quantize run starts from: which alias each format's artifact gets, what can be quantized
(a local folder's config and headers, or a Hub model's config), where its files are, whether the Hub may be used."""
from __future__ import annotations

import os
from pathlib import Path

from core import artifact, catalog
from core.errors import UserError
from quantize import layout


def dest_alias(resolved: catalog.Resolved, fmt: str) -> str:
    if resolved.variant is not None:
        return catalog.quantized_alias(resolved.variant.alias, fmt)
    stem = Path(resolved.location).name if resolved.source == "local" else resolved.location.split("/")[-1]
    return f"{stem}-{catalog.FORMATS[fmt].suffix}"


def check_base(resolved: catalog.Resolved) -> tuple[dict | None, str, str]:
    """(config, architecture, modality) of the base; user errors for what cannot be quantized."""
    if resolved.variant is not None and resolved.variant.is_quantized:
        raise UserError(f"'{resolved.name}' is already a quantized variant",
                        f"quantize its 16-bit base instead: --model {resolved.variant.family.base_alias}")
    if resolved.source == "local":
        cfg = artifact.read_config(resolved.path)
        if cfg.get("quantization_config"):
            raise UserError(f"{resolved.location} is already quantized "
                            f"({cfg['quantization_config'].get('quant_method')})", "pass a 16-bit base model")
        arch, modality = layout.modality_of(cfg)
        layout.tensor_shapes(resolved.path)  # headers readable (corrupt or truncated files fail here)
        return cfg, arch, modality
    if resolved.variant is not None:
        return None, resolved.variant.family.architecture, resolved.variant.modality
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(resolved.location).to_dict()
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated ...
        raise UserError(f"cannot read the config of Hub model {resolved.location} ({type(e).__name__})",
                        "check the id and the network (HF_HUB_OFFLINE=1 blocks downloads), or pass a local folder") \
            from None
    arch, modality = layout.modality_of(cfg)
    return cfg, arch, modality


def base_folder(resolved: catalog.Resolved) -> Path:
    if resolved.source == "local":
        return resolved.path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved.location, local_files_only=offline()))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot download {resolved.location} ({type(e).__name__})",
                        "check the Hub id and the network, or pass a local folder") from None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def local_corpus(resolved: catalog.Resolved) -> bool:
    """Tiny local models (catalog entries, or copies of their folders) calibrate on text found on this machine."""
    return bool(resolved.variant and resolved.variant.family.local_only) or \
        bool(resolved.path and (resolved.path / "tiny_model.json").is_file())
