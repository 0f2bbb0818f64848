"""The layer walk: each layer's output size, to find the grid a [yolo] layer sees.

Sizes follow AlexeyAB's ``make_*_layer`` functions (C integer division,
truncating towards zero). Two darknet sizes are tracked per layer: ``out``
(``l.out_w/h/c``, what [route], [sam] and [scale_channels] read) and what the
next layer receives. They differ only for ``antialiasing=1/2``, where darknet
feeds the next layer from the blur layer but leaves ``l.out_*`` at the
stride-1 size.

A layer this module cannot size yields ``Unsized`` (the section and the
reason); that is an error only when a [yolo] depends on it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .lexer import Section, c_atoi, split_darknet_list


@dataclass(frozen=True)
class Shape:
    """A layer output: width, height, channels (all positive)."""

    w: int
    h: int
    c: int


@dataclass(frozen=True)
class Unsized:
    """Why a layer's output size is unknown, and which section/option to blame."""

    section: Section
    reason: str
    option: str | None = None


Dims = Shape | Unsized
_Result = Dims | tuple[Dims, Dims]  # (what route etc. read, what the next layer gets)

_NO_SPATIAL = ("softmax", "cost", "detection", "contrastive", "gru", "lstm")
_PASS_THROUGH = ("dropout", "batchnorm", "activation", "normalization", "empty",
                 "yolo", "region", "Gaussian_yolo")


def _cdiv(a: int, b: int) -> int:
    """C's ``a / b`` for ints: truncation towards zero (b != 0)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _shape(section: Section, w: int, h: int, c: int) -> Dims:
    if w > 0 and h > 0 and c > 0:
        return Shape(w, h, c)
    return Unsized(section, f"its output size {w}x{h}x{c} is not positive")


def _window(s: Section, inp: Shape, size: int, strides: tuple[int, int], total_pad: int,
            c: int) -> Dims:
    """The conv/pool size rule ``(x + total_pad - size) / stride + 1``."""
    if 0 in strides:
        return Unsized(s, "stride 0 (darknet divides by zero)", "stride")
    return _shape(s, _cdiv(inp.w + total_pad - size, strides[0]) + 1,
                  _cdiv(inp.h + total_pad - size, strides[1]) + 1, c)


def _blur(s: Section, out: Dims, strides: tuple[int, int], aa: int) -> _Result:
    """With ``antialiasing`` the host layer ran at stride 1; darknet's blur layer
    (3x3 pad 1, or 2x2 pad 0 for antialiasing=2) then applies the stride and
    feeds the next layer, while ``l.out_*`` keeps the host size."""
    if not aa or isinstance(out, Unsized):
        return out
    blur, pad = (2, 0) if aa == 2 else (3, 1)
    return out, _window(s, out, blur, strides, 2 * pad, out.c)


def _assert_fails(s: Section, detail: str) -> Unsized:
    return Unsized(s, f"sizes disagree ({detail}); darknet aborts on an assertion", "from")


class LayerWalk:
    """Feed sections in order with ``push``; ask ``yolo_grid`` before pushing a [yolo]."""

    def __init__(self, width: int, height: int, channels: int, net: Section) -> None:
        self._sections: list[Section] = []
        self._outs: list[Dims] = []
        self._next: Dims = Shape(width, height, channels) if channels > 0 else Unsized(
            net, "[net] channels is 0, so the first layer gets no image", "channels")
        self._handlers: dict[str, Callable[..., _Result]] = {
            "convolutional": self._conv, "local": self._local, "maxpool": self._maxpool,
            "local_avgpool": self._local_avgpool, "avgpool": self._avgpool,
            "reorg": self._reorg, "reorg3d": self._reorg, "upsample": self._upsample,
            "route": self._route, "shortcut": self._shortcut,
            "scale_channels": self._scale_channels, "sam": self._sam,
            "connected": self._connected, "crop": self._crop, "implicit": self._implicit,
            "rnn": self._rnn, "crnn": self._recurrent_conv, "conv_lstm": self._recurrent_conv,
            "history": self._history,
        }

    @property
    def next_input(self) -> Dims:
        """What the next layer pushed will receive."""
        return self._next

    def push(self, section: Section) -> None:
        """Size one layer section and make its output the next layer's input."""
        result = self._size(section, self._next)
        out, nxt = result if isinstance(result, tuple) else (result, result)
        self._sections.append(section)
        self._outs.append(out)
        self._next = nxt

    def yolo_grid(self, section: Section, n: int, classes: int) -> tuple[int, int]:
        """Grid (w, h) of the [yolo] ``section`` about to be pushed, after darknet's
        check that its input has ``n * (5 + classes)`` channels."""
        inp = self._next
        if isinstance(inp, Unsized):
            bad = inp.section
            raise ConfigError(
                f"cannot size the input of the [yolo] at line {section.line}: {bad.header} "
                f"at line {bad.line}: {inp.reason}", path=section.path,
                line=bad.line_of(inp.option) if inp.option else bad.line, option=inp.option)
        expected = n * (5 + classes)
        if inp.c != expected:
            raise self._channel_error(section, inp.c, n, classes)
        return inp.w, inp.h

    def _channel_error(self, section: Section, got: int, n: int, classes: int) -> ConfigError:
        prev = self._sections[-1]
        need = f"n*(5+classes) = {n}*(5+{classes}) = {n * (5 + classes)}"
        if prev.type == "convolutional":
            return prev.error("filters", f"[convolutional] at line {prev.line} has filters={got}, "
                              f"but the [yolo] at line {section.line} needs filters = {need}")
        return prev.error(None, f"{prev.header} at line {prev.line} outputs {got} channels, but "
                          f"the [yolo] at line {section.line} needs {need}")

    # -- sizing -------------------------------------------------------------

    def _size(self, section: Section, inp: Dims) -> _Result:
        kind = section.type
        if not section.recognized or kind == "net":
            return Unsized(section, "darknet does not recognise this section type here")
        if kind in _NO_SPATIAL:
            return Unsized(section, f"darknet gives a [{kind}] output no width/height")
        if kind in _PASS_THROUGH:
            return inp
        handler = self._handlers[kind]
        if kind in ("route", "connected", "implicit", "rnn"):
            return handler(section, inp)  # their size does not depend on the input
        return inp if isinstance(inp, Unsized) else handler(section, inp)

    def _conv(self, s: Section, inp: Shape) -> _Result:
        filters = s.get_int("filters", 1)
        size = s.get_int("size", 1)
        stride_x, stride_y = s.get_int("stride_x", -1), s.get_int("stride_y", -1)
        if stride_x < 1 or stride_y < 1:
            stride = s.get_int("stride", 1)
            stride_x = stride if stride_x < 1 else stride_x
            stride_y = stride if stride_y < 1 else stride_y
        padding = s.get_int("padding", 0)
        if s.get_int("pad", 0):
            padding = _cdiv(size, 2)
        # AlexeyAB's convolutional_out_width ignores dilation.
        aa = s.get_int("antialiasing", 0)
        out = _window(s, inp, size, (1, 1) if aa else (stride_x, stride_y), 2 * padding, filters)
        return _blur(s, out, (stride_x, stride_y), aa)

    def _maxpool(self, s: Section, inp: Shape) -> _Result:
        stride = s.get_int("stride", 1)
        strides = (s.get_int("stride_x", stride), s.get_int("stride_y", stride))
        size = s.get_int("size", stride)
        padding = s.get_int("padding", size - 1)
        aa = s.get_int("antialiasing", 0)
        if s.get_int("maxpool_depth", 0):
            out = _shape(s, inp.w, inp.h, s.get_int("out_channels", 1))
        else:
            out = _window(s, inp, size, (1, 1) if aa else strides, padding, inp.c)
        return _blur(s, out, strides, aa)

    def _local_avgpool(self, s: Section, inp: Shape) -> _Result:
        stride = s.get_int("stride", 1)
        strides = (s.get_int("stride_x", stride), s.get_int("stride_y", stride))
        size = s.get_int("size", stride)
        return _window(s, inp, size, strides, s.get_int("padding", size - 1), inp.c)

    def _local(self, s: Section, inp: Shape) -> _Result:
        size, stride = s.get_int("size", 1), s.get_int("stride", 1)
        shrink = 1 if s.get_int("pad", 0) else size
        if stride == 0:
            return Unsized(s, "stride 0 (darknet divides by zero)", "stride")
        return _shape(s, _cdiv(inp.w - shrink, stride) + 1, _cdiv(inp.h - shrink, stride) + 1,
                      s.get_int("filters", 1))

    def _recurrent_conv(self, s: Section, inp: Shape) -> _Result:
        """[crnn]/[conv_lstm]: sized by their output convolution (size 3, stride 1);
        darknet asserts that it keeps the input's width and height."""
        size, stride = s.get_int("size", 3), s.get_int("stride", 1)
        padding = _cdiv(size, 2) if s.get_int("pad", 0) else s.get_int("padding", 0)
        out = _window(s, inp, size, (stride, stride), 2 * padding, s.get_int("output", 1))
        if isinstance(out, Shape) and (out.w, out.h) != (inp.w, inp.h):
            return Unsized(s, f"it would change the size {inp.w}x{inp.h} to {out.w}x{out.h}, "
                           "which darknet's recurrent layers assert against")
        return out

    def _rnn(self, s: Section, inp: Dims) -> _Result:
        return _shape(s, 1, 1, s.get_int("output", 1))

    def _history(self, s: Section, inp: Shape) -> _Result:
        return _shape(s, inp.w, inp.h, inp.c * s.get_int("history_size", 4))

    def _avgpool(self, s: Section, inp: Shape) -> _Result:
        return Shape(1, 1, inp.c)

    def _reorg(self, s: Section, inp: Shape) -> _Result:
        stride = s.get_int("stride", 1)
        if stride == 0:
            return Unsized(s, "stride 0 (darknet divides by zero)", "stride")
        if s.get_int("reverse", 0):
            return _shape(s, inp.w * stride, inp.h * stride, _cdiv(inp.c, stride * stride))
        return _shape(s, _cdiv(inp.w, stride), _cdiv(inp.h, stride), inp.c * stride * stride)

    def _upsample(self, s: Section, inp: Shape) -> _Result:
        stride = s.get_int("stride", 2)
        if stride < 0:  # a negative stride downsamples
            return _shape(s, _cdiv(inp.w, -stride), _cdiv(inp.h, -stride), inp.c)
        return _shape(s, inp.w * stride, inp.h * stride, inp.c)

    def _connected(self, s: Section, inp: Dims) -> _Result:
        return _shape(s, 1, 1, s.get_int("output", 1))

    def _implicit(self, s: Section, inp: Dims) -> _Result:
        return _shape(s, 1, s.get_int("atoms", 1), s.get_int("filters", 128))

    def _crop(self, s: Section, inp: Shape) -> _Result:
        return _shape(s, s.get_int("crop_width", 1), s.get_int("crop_height", 1), inp.c)

    def _ref(self, s: Section, key: str, piece: str) -> Dims:
        """The ``out`` of the layer that ``piece`` (absolute or negative relative) names."""
        index = c_atoi(piece)
        if index is None:
            return Unsized(s, f"{key} item {piece!r} is not a layer index", key)
        count = len(self._outs)
        resolved = count + index if index < 0 else index
        if not 0 <= resolved < count:
            return Unsized(s, f"{key}={piece} names layer {resolved}, but only layers "
                           f"0..{count - 1} precede it", key)
        return self._outs[resolved]

    def _from(self, s: Section) -> Dims:
        """The ``out`` of the single layer named by ``from=``."""
        value = s.get_str("from")
        if value is None:
            return Unsized(s, "no from= (darknet crashes)", "from")
        return self._ref(s, "from", value)

    def _shortcut(self, s: Section, inp: Shape) -> _Result:
        """Output = input; darknet asserts every ``from`` layer has the same w x h."""
        value = s.get_str("from")
        if value is None:
            return Unsized(s, "no from= (darknet crashes)", "from")
        for piece in split_darknet_list(value, stop_at_hash=False):
            ref = self._ref(s, "from", piece)
            if isinstance(ref, Unsized):
                return ref
            if (ref.w, ref.h) != (inp.w, inp.h):
                return _assert_fails(s, f"from layer is {ref.w}x{ref.h}, input {inp.w}x{inp.h}")
        return inp

    def _scale_channels(self, s: Section, inp: Shape) -> _Result:
        """Output takes the ``from`` layer's size; darknet asserts the input is 1x1
        with the same channels (or, with scale_wh=1, one channel of the same w x h)."""
        ref = self._from(s)
        if isinstance(ref, Unsized):
            return ref
        if s.get_int("scale_wh", 0):
            ok = inp.c == 1 and (ref.w, ref.h) == (inp.w, inp.h)
        else:
            ok = (inp.w, inp.h) == (1, 1) and ref.c == inp.c
        return ref if ok else _assert_fails(s, f"input {inp.w}x{inp.h}x{inp.c}, from layer "
                                               f"{ref.w}x{ref.h}x{ref.c}")

    def _sam(self, s: Section, inp: Shape) -> _Result:
        """Output takes the ``from`` layer's size, which darknet asserts equals the input's."""
        ref = self._from(s)
        if isinstance(ref, Unsized) or ref == inp:
            return ref
        return _assert_fails(s, f"input {inp.w}x{inp.h}x{inp.c}, from layer "
                                f"{ref.w}x{ref.h}x{ref.c}")

    def _route(self, s: Section, inp: Dims) -> _Result:
        value = s.get_str("layers")
        if value is None:
            return Unsized(s, "no layers= (darknet stops)", "layers")
        dims = [self._ref(s, "layers", p) for p in split_darknet_list(value, stop_at_hash=False)]
        bad = next((d for d in dims if isinstance(d, Unsized)), None)
        if bad is not None:
            return bad
        shapes = [d for d in dims if isinstance(d, Shape)]
        first = shapes[0]
        for other in shapes[1:]:
            if (other.w, other.h) != (first.w, first.h):
                return Unsized(s, f"routed layers differ in size ({first.w}x{first.h} vs "
                               f"{other.w}x{other.h}); darknet zeroes the output", "layers")
        groups = s.get_int("groups", 1)
        if groups == 0:
            return Unsized(s, "groups=0 (darknet divides by zero)", "groups")
        return _shape(s, first.w, first.h, _cdiv(sum(d.c for d in shapes), groups))
