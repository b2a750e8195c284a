"""The shapes world's caption grammar: `a {color} {shape}`, `... moves {direction}`,
`... stays still`."""

from __future__ import annotations

import re

from phenaki_jax.data.shapes_world.render import COLORS, DIRECTIONS, SHAPES, check_color

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_PROMPT_RE = re.compile(
    rf"a (?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE})"
    r"(?: (?:moves (?P<direction>left|right|up|down)|(?P<still>stays still)))?"
)


def caption_video(color: str, shape: str, direction: str) -> str:
    """`a {color} {shape} moves {direction}`, or `a {color} {shape} stays still`."""
    base = caption_image(color, shape)
    if direction == "still":
        return f"{base} stays still"
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    return f"{base} moves {direction}"


def caption_image(color: str, shape: str) -> str:
    """`a {color} {shape}`."""
    check_color(color)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return f"a {color} {shape}"


def parse_prompt(prompt: str) -> tuple[str, str, str | None]:
    """Parses a caption of the grammar exactly (lower case, single spaces, no period).

    Returns:
      (color, shape, direction), direction None for an image caption `a {color} {shape}`.

    Raises:
      ValueError: the text is not a caption of the grammar.
    """
    m = _PROMPT_RE.fullmatch(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(
            f"prompt {prompt!r} is outside the shapes-world grammar: expected "
            "'a {color} {shape}', 'a {color} {shape} moves {left|right|up|down}' or "
            f"'a {{color}} {{shape}} stays still', with color in {COLORS} and shape in {SHAPES}"
        )
    direction = "still" if m.group("still") else m.group("direction")
    return m.group("color"), m.group("shape"), direction
