"""Space keys that were renamed: refused in a space file, upgraded in a search's stored copy.

"Anchor" once meant three things; it now means only a published reference codec curve
(``bd-rate --anchor``). ``search.anchor`` became ``search.baseline`` and ``ladder.anchor``
became ``ladder.start``. A space file that still uses an old key is refused before anything
starts, with the new key named (a silently accepted alias would keep the old word alive).
A search started before the rename stored its space file with the old keys in its experiment
folder; :func:`upgrade_renamed` reads that copy under the new names so the search still resumes.
"""

from __future__ import annotations

from typing import Any

from search.errors import SpaceError

#: (section, old key) -> (new key, what it means)
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("search", "anchor"): ("baseline", "the baseline variant every other variant's rate saving is measured "
                                       "against, e.g. {label: baseline}"),
    ("ladder", "anchor"): ("start", "the start point, the rate point of each rate family trained from scratch; "
                                    "the others fine-tune from its weights"),
}


def _renamed_in(raw: Any):
    """(section, old key, new key, meaning) of each old key the top-level mapping ``raw`` holds."""
    if not isinstance(raw, dict):
        return
    for (section, old), (new, meaning) in RENAMED.items():
        if isinstance(raw.get(section), dict) and old in raw[section]:
            yield section, old, new, meaning


def refuse_renamed(file: str, raw: Any) -> None:
    """Raise :class:`SpaceError` at the first renamed key of a space file, naming its new key."""
    for section, old, new, meaning in _renamed_in(raw):
        raise SpaceError(file, f"{section}.{old}", f"renamed to {section}.{new} (same meaning: {meaning}); "
                         f"write `{new}:` instead of `{old}:` in the {section} section")


def upgrade_renamed(raw: Any) -> None:
    """Rename, in place, the old keys of a space copy stored by a search started before the rename.

    Compatibility shim for existing experiment folders. A copy holding both the old and the new
    key was never valid: it is left as it is, for the schema to refuse."""
    for section, old, new, _ in list(_renamed_in(raw)):
        if new not in raw[section]:
            raw[section][new] = raw[section].pop(old)


__all__ = ["RENAMED", "refuse_renamed", "upgrade_renamed"]
