"""Torch-free stub nodes for the graph tests; CALLS records every execute."""
from __future__ import annotations

from arnodes.nodes.base import (
    ANY, BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK, STRING, InputSpec, Node, NodeResult, NodeSpec, OutputSpec,
)

CALLS: list[str] = []


def spec(class_type, inputs=(), outputs=(), **kw):
    return NodeSpec(class_type, class_type, "test", tuple(inputs), tuple(outputs), **kw)


class Const(Node):
    SPEC = spec("Const", [InputSpec("value", INT, default=0, min=-100, max=100)], [OutputSpec("value", INT)])

    @classmethod
    def execute(cls, ctx, value):
        CALLS.append(ctx.node_id)
        return (value,)


class Add(Node):
    SPEC = spec("Add", [InputSpec("a", INT), InputSpec("b", INT, default=1)], [OutputSpec("sum", INT)])

    @classmethod
    def execute(cls, ctx, a, b):
        CALLS.append(ctx.node_id)
        return (a + b,)


class Scale(Node):
    SPEC = spec("Scale", [InputSpec("x", INT), InputSpec("factor", FLOAT, default=1.0, min=0.0, max=10.0),
                          InputSpec("mode", COMBO, default="up", choices=("up", "down")),
                          InputSpec("flag", BOOLEAN, default=False), InputSpec("label", STRING, default="")],
                [OutputSpec("y", FLOAT)])

    @classmethod
    def execute(cls, ctx, x, factor, mode, flag, label):
        CALLS.append(ctx.node_id)
        assert isinstance(factor, float)
        return (x * factor if mode == "up" else x / factor,)


class Sink(Node):
    SPEC = spec("Sink", [InputSpec("value", ANY), InputSpec("seed", INT, default=0, min=0)], [],
                output_node=True)

    @classmethod
    def execute(cls, ctx, value, seed):
        CALLS.append(ctx.node_id)
        return NodeResult((), ui={"values": [value]})


class Noise(Node):
    SPEC = spec("Noise", [], [OutputSpec("value", INT)], pure=False)
    counter = [0]

    @classmethod
    def execute(cls, ctx):
        CALLS.append(ctx.node_id)
        cls.counter[0] += 1
        return (cls.counter[0],)


class Steps(Node):
    SPEC = spec("Steps", [InputSpec("x", INT), InputSpec("steps", INT, default=3)], [OutputSpec("x", INT)])

    @classmethod
    def execute(cls, ctx, x, steps):
        CALLS.append(ctx.node_id)
        for i in range(steps):
            ctx.progress(i + 1, steps)
        return (x,)


class Fail(Node):
    SPEC = spec("Fail", [InputSpec("x", INT)], [OutputSpec("x", INT)])

    @classmethod
    def execute(cls, ctx, x):
        CALLS.append(ctx.node_id)
        raise ValueError("boom: x must be even")


class MakeImage(Node):
    SPEC = spec("MakeImage", [InputSpec("seed", INT, default=0)], [OutputSpec("image", IMAGE),
                                                                   OutputSpec("mask", MASK)])

    @classmethod
    def execute(cls, ctx, seed):
        CALLS.append(ctx.node_id)
        return ("image", "mask")


class ShowImage(Node):
    SPEC = spec("ShowImage", [InputSpec("image", IMAGE), InputSpec("mask", MASK, optional=True)], [],
                output_node=True)

    @classmethod
    def execute(cls, ctx, image, mask):
        CALLS.append(ctx.node_id)
        return NodeResult((), ui={"images": [image]})


REGISTRY = {c.SPEC.class_type: c for c in (Const, Add, Scale, Sink, Noise, Steps, Fail, MakeImage, ShowImage)}
