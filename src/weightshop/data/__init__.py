"""Curation: turn the folder a user hands over into a checked, versioned training set (`dataset.json`).

    from weightshop.data import check_dataset, write_manifest, write_report
    manifest = check_dataset("my_photos/", trigger="ohwx", tokenizer=tok)
    write_manifest(manifest, "out/dataset.json"); write_report(manifest, "my_photos/", "out/")

Modules: sources (what the user handed over), images (the one image reader), buckets (training sizes),
quality and marks (measurements), check (verdicts and the manifest), manifest (its format), captions and
captioners (text edits, auto-captions), report (the HTML page and CLI rows).
"""

from weightshop.data.buckets import BucketAssignment, ResizePolicy, assign_bucket, bucket_sizes, resize_and_crop
from weightshop.data.captioners import Captioner, FunctionCaptioner, Qwen3VLCaptioner, autocaption
from weightshop.data.captions import (KREA2_CAPTION_TOKENS, apply_caption_edits, apply_trigger, count_tokens,
                                      find_replace, render_template)
from weightshop.data.check import check_dataset
from weightshop.data.images import DEFAULT_MAX_PIXELS, ImageRejected, LoadedImage, load_image
from weightshop.data.manifest import (MANIFEST_NAME, exclude_items, manifest_hash, read_manifest, restore_items,
                                      usable_items, write_manifest)
from weightshop.data.report import summary_rows, write_report
from weightshop.data.sources import read_source

__all__ = [
    "BucketAssignment", "Captioner", "DEFAULT_MAX_PIXELS", "FunctionCaptioner", "ImageRejected", "KREA2_CAPTION_TOKENS",
    "LoadedImage", "MANIFEST_NAME", "Qwen3VLCaptioner", "ResizePolicy", "apply_caption_edits", "apply_trigger",
    "assign_bucket", "autocaption", "bucket_sizes", "check_dataset", "count_tokens", "exclude_items", "find_replace",
    "load_image", "manifest_hash", "read_manifest", "read_source", "render_template", "resize_and_crop",
    "restore_items", "summary_rows", "usable_items", "write_manifest", "write_report",
]
