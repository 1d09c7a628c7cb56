"""Caption text: counting, checks, statistics, and the edits a user asks for (trigger, find/replace,
templates). Edits change the manifest only; the user's caption files are never rewritten.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from statistics import mean, median

from weightshop.data.manifest import recount, refresh_verdict
from weightshop.errors import WeightshopError
from weightshop.models.spec import KREA2
from weightshop.models.tokenizer import SUFFIX_TOKENS

# Krea 2 encodes at most max_sequence_length = 512 prompt tokens, 5 of which are its template suffix.
KREA2_CAPTION_TOKENS = KREA2.max_sequence_length - SUFFIX_TOKENS  # what the prompt template leaves a caption
TRIGGER_MODES = ("prefix", "suffix", "template")
# Reasons the caption checks produce; edits remove and re-derive exactly these.
CAPTION_CHECKS = ("caption missing", "caption empty", "caption too long", "caption lacks the trigger")
_STOPWORDS = frozenset("a an the of and or in on at to with for by from as is are be its it this that".split())


def count_tokens(text: str, tokenizer=None) -> int:
    """Tokens the text encoder sees for `text` (any HF tokenizer callable), or its word count without one."""
    if tokenizer is None:
        return len(text.split())
    try:
        encoded = tokenizer(text, add_special_tokens=False)
    except TypeError:
        encoded = tokenizer(text)
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    elif hasattr(encoded, "input_ids"):
        encoded = encoded.input_ids
    return len(encoded)


def has_trigger(caption: str | None, trigger: str) -> bool:
    """Whether `trigger` occurs as a whole phrase (case-insensitive) in the caption."""
    if not caption:
        return False
    return re.search(rf"(?<!\w){re.escape(trigger.strip())}(?!\w)", caption, re.IGNORECASE) is not None


def caption_reasons(item: dict, *, trigger: str | None, max_tokens: int, exact: bool) -> list[str]:
    """Warnings about one item's caption (each starts with one of CAPTION_CHECKS)."""
    caption = item.get("caption")
    if caption is None:
        return ["caption missing (no sidecar .txt next to the image and no caption in the metadata)"]
    if not caption.strip():
        return [f"caption empty (its {item.get('caption_source', 'caption')} text is blank)"]
    out = []
    tokens = item.get("caption_tokens") or 0
    if tokens > max_tokens:
        unit = "tokens" if exact else "words (approximate: no tokenizer given, and tokens outnumber words)"
        out.append(f"caption too long: {tokens} {unit} > {max_tokens}; the text encoder drops the rest")
    if trigger and not has_trigger(caption, trigger):
        out.append(f"caption lacks the trigger {trigger!r}")
    return out


def recheck_caption(item: dict, *, trigger: str | None, max_tokens: int, tokenizer=None) -> None:
    """Recount tokens and replace the item's caption warnings (other reasons are kept)."""
    caption = item.get("caption")
    item["caption_tokens"] = None if caption is None else count_tokens(caption, tokenizer)
    if item["verdict"] == "rejected":
        return
    kept = [r for r in item["reasons"] if not r.startswith(CAPTION_CHECKS)]
    item["reasons"] = kept + caption_reasons(item, trigger=trigger, max_tokens=max_tokens, exact=tokenizer is not None)
    refresh_verdict(item)


def caption_stats(items: Iterable[dict], *, trigger: str | None, max_tokens: int, exact: bool, top: int = 20) -> dict:
    """Statistics over the captions of the given (usable) items."""
    items = list(items)
    captions = [i["caption"] for i in items if i.get("caption") and i["caption"].strip()]
    tokens = [i["caption_tokens"] for i in items if i.get("caption") and i["caption"].strip()]
    words = Counter(w for c in captions for w in re.findall(r"[^\W\d_][\w'-]*", c.lower()) if w not in _STOPWORDS)
    repeats = Counter(captions)
    return {
        "items": len(items),
        "with_caption": len(captions),
        "missing": sum(1 for i in items if i.get("caption") is None),
        "empty": sum(1 for i in items if i.get("caption") is not None and not i["caption"].strip()),
        "count_method": "tokenizer" if exact else "words (approximate)",
        "limit": max_tokens,
        "tokens": ({"mean": round(mean(tokens), 2), "median": median(tokens), "min": min(tokens), "max": max(tokens)}
                   if tokens else None),
        "over_limit": sum(1 for t in tokens if t > max_tokens),
        "trigger": trigger,
        "missing_trigger": sum(1 for c in captions if trigger and not has_trigger(c, trigger)),
        "identical_captions": sum(n for n in repeats.values() if n > 1),
        "by_source": dict(Counter(i.get("caption_source", "none") for i in items)),
        "top_words": [[w, n] for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
    }


def render_template(template: str, fields: Mapping[str, object]) -> str:
    """`template.format(**fields)`, with an error that names a missing field and the available ones."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise WeightshopError(f"caption template {template!r} is malformed ({exc}); use {{field}} placeholders "
                              f"and double braces for literal ones") from None
    for name in names:
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not root or root.isdigit():
            raise WeightshopError(f"caption template {template!r} uses a positional placeholder {{{name}}}; "
                                  f"name the field, e.g. {{caption}} (available: {', '.join(sorted(fields))})")
        if root not in fields:
            raise WeightshopError(f"caption template {template!r} uses field {root!r}, which is not available "
                                  f"(available: {', '.join(sorted(fields)) or 'none'})")
    try:
        return template.format_map(dict(fields))
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise WeightshopError(f"caption template {template!r} cannot be filled: {exc}") from None


def apply_trigger(caption: str | None, trigger: str, mode: str = "prefix",
                  template: str = "{trigger}, {caption}") -> str:
    """Insert the trigger phrase once: a caption that already contains it is returned unchanged."""
    if mode not in TRIGGER_MODES:
        raise WeightshopError(f"trigger mode {mode!r} is not known (accepted: {', '.join(TRIGGER_MODES)})")
    trigger = (trigger or "").strip()
    caption = (caption or "").strip()
    if not trigger or has_trigger(caption, trigger):
        return caption
    if not caption:
        return trigger
    if mode == "prefix":
        return f"{trigger}, {caption}"
    if mode == "suffix":
        return f"{caption}, {trigger}"
    return render_template(template, {"trigger": trigger, "caption": caption})


def find_replace(caption: str | None, pairs: Mapping[str, str] | Iterable[tuple[str, str]],
                 regex: bool = False) -> str | None:
    """Apply (find, replace) pairs in order; whitespace runs left by removals collapse to one space."""
    if caption is None:
        return None
    pairs = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    out = caption
    for find, replace in pairs:
        if regex:
            try:
                out = re.sub(find, replace, out)
            except re.error as exc:
                raise WeightshopError(f"find/replace pattern {find!r} is not a valid regular expression "
                                      f"({exc})") from None
        else:
            out = out.replace(find, replace)
    return re.sub(r"[ \t]{2,}", " ", out).strip()


def apply_caption_edits(manifest_or_items, *, new_captions: Mapping[str, str] | None = None, new_source: str = "auto",
                        overwrite: bool = False, replace=None, regex: bool = False, template: str | None = None,
                        trigger: str | None = None, trigger_mode: str = "prefix",
                        trigger_template: str = "{trigger}, {caption}", tokenizer=None,
                        max_caption_tokens: int = KREA2_CAPTION_TOKENS) -> dict:
    """Edit captions in a manifest (or a list of items) in place; returns what changed.

    Order: `new_captions` {file: text} fill in captions (only where the item has none or a blank one,
    unless `overwrite`), then find/replace, then `template` (fields: caption, trigger, file, stem, and the
    item's extra columns), then `trigger` is inserted (and becomes the manifest's trigger; without one, the
    manifest's existing trigger is only checked for). The first edit of a caption keeps the original in
    `caption_original`. With a manifest, caption warnings, verdicts, counts and caption stats are
    refreshed and the edit is logged in `caption_edits`.
    """
    is_manifest = isinstance(manifest_or_items, Mapping) and "items" in manifest_or_items
    items = manifest_or_items["items"] if is_manifest else list(manifest_or_items)
    # `trigger` is inserted; the manifest's own trigger (when no new one is given) is only checked for.
    check_trigger = trigger or (manifest_or_items.get("trigger") if is_manifest else None)
    summary = {"filled": 0, "kept_existing": 0, "edited": 0, "unchanged": 0}
    for item in items:
        if item["verdict"] == "rejected":
            continue
        before = item.get("caption")
        caption, source = before, item.get("caption_source", "none")
        if new_captions and item["file"] in new_captions:
            if caption and caption.strip() and not overwrite:
                summary["kept_existing"] += 1
            else:
                caption, source = str(new_captions[item["file"]]).strip(), new_source
                summary["filled"] += 1
        if caption is not None and replace:
            caption = find_replace(caption, replace, regex=regex)
        if caption is not None and template:
            stem = item["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            fields = {**(item.get("extra") or {}), "caption": caption, "trigger": check_trigger or "",
                      "file": item["file"], "stem": stem}
            caption = render_template(template, fields).strip()
        if trigger and caption is not None:
            caption = apply_trigger(caption, trigger, trigger_mode, trigger_template)
        if caption != before:
            if before is not None and "caption_original" not in item:
                item["caption_original"] = before
            item["caption"], item["caption_source"] = caption, source
            summary["edited"] += 1
        else:
            summary["unchanged"] += 1
        recheck_caption(item, trigger=check_trigger, max_tokens=max_caption_tokens, tokenizer=tokenizer)
    if is_manifest:
        manifest = manifest_or_items
        manifest["trigger"] = check_trigger
        recount(manifest)
        manifest["stats"]["captions"] = caption_stats(
            (i for i in items if i["verdict"] != "rejected"), trigger=check_trigger, max_tokens=max_caption_tokens,
            exact=tokenizer is not None)
        manifest.setdefault("caption_edits", []).append({
            "new_captions": len(new_captions or {}), "source": new_source if new_captions else None,
            "overwrite": overwrite, "replace": [list(p) for p in (replace.items() if isinstance(replace, Mapping)
                                                                  else replace or [])],
            "regex": regex, "template": template, "trigger": trigger, "trigger_mode": trigger_mode, **summary})
    return summary
