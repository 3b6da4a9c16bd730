"""ARClassCondition: class names or ids plus classifier-free guidance settings -> AR_COND;
ARTextCondition: a prompt (and a negative one) encoded by the model's text encoder -> AR_COND;
ARClassPicker: a searchable list of the known class names, for front ends without our class menu.

Both conditions feed every task node; which one a model takes is the model's (``bundle.takes_text``),
and the other is refused naming the model."""
from __future__ import annotations

from typing import Any

from ..engine.conditioning import Conditioning
from ..engine.errors import ArnodesError, InvalidInputError, LimitError, UnknownNameError
from ..engine.limits import check_batch
from ..engine.limits import current as current_limits
from ..engine.loader import ANY_STYLE
from .base import (
    AR_COND, AR_MODEL, COMBO, FLOAT, INT, STRING, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec,
)
from .types import check_model, check_range, class_name_choices, style_choices


MAX_NAME_CHARS = 100  # per class: the longest emoji / ImageNet names are ~70 characters
MAX_PROMPT_CHARS = 4000  # a caption is 120 tokens (~600 characters); the encoder truncates, with a warning


def _check_size(text: str, name: str) -> None:
    """Refuse a class list longer than the batch limit allows before resolving a single name."""
    limit = current_limits().max_batch
    if len(text) > limit * MAX_NAME_CHARS:
        raise LimitError(f"input {name!r}: {len(text):,} characters is more than {limit} class names can take "
                         f"(ARNODES_MAX_BATCH = {limit}, at most {MAX_NAME_CHARS} characters each)")
    pieces = sum(1 for chunk in text.split(";") if chunk.strip())
    check_batch(pieces, f"input {name!r}")


def _resolve(bundle: Any, text: str, name: str) -> list[int]:
    """Ids for "red heart, 3; cat face"; errors say which input held the bad name."""
    _check_size(text, name)
    try:
        ids = bundle.classes.resolve_many(text)
    except UnknownNameError as e:
        raise UnknownNameError(f"input {name!r}: {e}") from None
    except ArnodesError as e:
        raise InvalidInputError(f"input {name!r}: {e}") from None
    if not ids:
        raise InvalidInputError(f"input {name!r}: no class given; write names or ids separated by ',' or ';'")
    check_batch(len(ids), f"input {name!r}")
    return ids


class ARClassCondition(Node):
    """Several classes at once make a batch (one image per class); the names are checked against the model."""

    SPEC = NodeSpec(
        class_type="ARClassCondition", display_name="AR Class Condition", category="conditioning",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("classes", STRING, default="0",
                      tooltip="Class names or ids, several separated by ',' or ';' (e.g. 'red heart; 3')."),
            InputSpec("cfg", FLOAT, default=4.0, min=0.0, max=30.0, step=0.1,
                      tooltip="Classifier-free guidance scale (each family's own convention)."),
            InputSpec("cfg_schedule", COMBO, default="linear", choices=("linear", "constant"),
                      tooltip="linear: VAR's ramp over the scales; constant: the same scale at every step."),
            InputSpec("negative", STRING, default="", optional=True,
                      tooltip="Class(es) to guide away from; empty = the unconditional (null) class. "
                              "One class, or one per positive class."),
            InputSpec("style", COMBO, default=ANY_STYLE, choices=style_choices, optional=True,
                      tooltip="Drawing style (models trained on several emoji sets); 'any' lets the seed "
                              "pick one."),
        ),
        outputs=(OutputSpec("cond", AR_COND),),
        description="Class conditioning and guidance for the AR task nodes.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, classes: str, cfg: float, cfg_schedule: str,
                negative: str | None = "", style: str | None = ANY_STYLE) -> tuple[Conditioning]:
        handle = check_model(model)
        check_range("cfg", cfg, 0.0, 30.0)
        if cfg_schedule not in ("linear", "constant"):
            raise InvalidInputError(f"input 'cfg_schedule': {cfg_schedule!r} is not one of linear, constant")
        if not isinstance(classes, str):
            classes = str(classes)
        with handle.use() as bundle:
            if bundle.takes_text:
                raise InvalidInputError(f"input 'model': {bundle.name!r} is a text-to-image model; give it a prompt "
                                        f"(ARTextCondition), not classes")
            ids = _resolve(bundle, classes, "classes")
            neg = None
            if negative is not None and str(negative).strip():
                neg = _resolve(bundle, str(negative), "negative")
                if len(neg) == 1:
                    neg = neg * len(ids)
                elif len(neg) != len(ids):
                    raise InvalidInputError(f"input 'negative': {len(neg)} classes for {len(ids)} positive classes; "
                                            f"give one, or one per class")
            names = tuple(bundle.classes.name(i) for i in ids)
            try:
                style_id = bundle.style_id(ANY_STYLE if style is None else str(style))
            except UnknownNameError as e:
                raise UnknownNameError(f"input 'style': {e}") from None
        styles = None if style_id is None else (style_id,) * len(ids)
        style_names = () if style_id is None else (bundle.styles[style_id],) * len(ids)
        cond = Conditioning(tuple(ids), cfg=float(cfg), schedule=cfg_schedule,
                            negative_class_ids=None if neg is None else tuple(neg), class_names=names,
                            style_ids=styles, style_names=style_names)
        return (cond,)


def _prompt(text: Any, name: str, required: bool) -> str | None:
    """The stripped prompt; None for an empty optional one."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InvalidInputError(f"input {name!r} must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise LimitError(f"input {name!r}: {len(text):,} characters; a prompt may have at most {MAX_PROMPT_CHARS:,} "
                         f"(the text encoder reads 120 tokens of it)")
    text = text.strip()
    if not text and required:
        raise InvalidInputError(f"input {name!r} is empty; describe the picture to generate")
    return text or None


class ARTextCondition(Node):
    """The model's own text encoder turns the prompt into caption features; a prompt it has encoded
    before is not encoded again (the encoder remembers it), so a new seed or a second node costs nothing."""

    SPEC = NodeSpec(
        class_type="ARTextCondition", display_name="AR Text Condition", category="conditioning",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("prompt", STRING, default="", multiline=True,
                      tooltip="What to draw, in words (text-to-image models). One prompt; batch_size makes more."),
            InputSpec("cfg", FLOAT, default=7.5, min=0.0, max=30.0, step=0.1,
                      tooltip="Classifier-free guidance scale: higher follows the prompt more closely."),
            InputSpec("negative", STRING, default="", optional=True, multiline=True,
                      tooltip="What to guide away from; empty = the model's learned empty caption."),
            InputSpec("cfg_interval", INT, default=-1, min=-1, max=1_000_000, optional=True,
                      tooltip="Guide only the first N image tokens; -1 = every token."),
        ),
        outputs=(OutputSpec("cond", AR_COND),),
        description="Text conditioning and guidance for the AR task nodes (text-to-image models).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, prompt: str, cfg: float, negative: str | None = "",
                cfg_interval: int | None = -1) -> tuple[Conditioning]:
        handle = check_model(model)
        check_range("cfg", cfg, 0.0, 30.0)
        interval = -1 if cfg_interval is None else cfg_interval
        check_range("cfg_interval", interval, -1, None)
        text = _prompt(prompt, "prompt", required=True)
        neg = _prompt(negative, "negative", required=False)
        with handle.use() as bundle:
            if not bundle.takes_text:
                raise InvalidInputError(f"input 'model': {bundle.name!r} is a class-conditional model; give it "
                                        f"classes (ARClassCondition), not a prompt")
            if bundle.text_encoder is None:
                raise InvalidInputError(f"input 'model': {bundle.name!r} has no text encoder to read the prompt")
            encoded = bundle.text_encoder.encode([text], None if neg is None else [neg])
        return (Conditioning(cfg=float(cfg), schedule="constant", cfg_interval=int(interval), text=encoded),)


class ARClassPicker(Node):
    """ComfyUI shows ARClassCondition's classes as free text: this node's menu lists the bundled models'
    class names and ImageNet's, and its output can feed that input (names are still checked there,
    against the model that is actually loaded)."""

    SPEC = NodeSpec(
        class_type="ARClassPicker", display_name="AR Class Picker", category="conditioning",
        inputs=(
            InputSpec("class_name", COMBO, default="red heart", choices=class_name_choices,
                      tooltip="Type to search the bundled models' classes and ImageNet's."),
            InputSpec("more", STRING, default="", optional=True,
                      tooltip="More classes to append (names or ids, separated by ';'): one image each."),
        ),
        outputs=(OutputSpec("classes", STRING, "For ARClassCondition's 'classes' input."),),
        description="Pick a class by name from a list; wire the output into ARClassCondition's classes.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, class_name: str, more: str | None = "") -> tuple[str]:
        extra = "" if more is None else str(more).strip()
        _check_size(extra, "more")
        return (f"{class_name}; {extra}" if extra else str(class_name),)
