"""Model registries: one decorated builder function per model (the pattern of timm's ``@register_model``).

A model is added by decorating the function that builds it::

    @CLASSIFIERS.register("mynet", min_size=16)
    def mynet(num_classes: int, in_channels: int = 1, image_size=(64, 64), width: int = 32) -> Classifier:
        '''My net: one line that ``spinenet.models.list_models``/error messages show.'''
        ...

    @SEGMENTERS.register("myseg", multiple=16)
    def myseg(num_classes: int, in_channels: int = 1, depth: int = 4) -> nn.Module: ...

and is then built by name through the usual factories and configs (``model.net.name=mynet``). The entry
keeps the builder, its input-size rule (``min_size``: smallest height/width; ``multiple``: what height and
width must be a multiple of, a number or a function of the model options), its options and their defaults
(read from the builder's signature unless given), aliases and a one-line description (the first line of
the builder's docstring unless given). Unlike timm's registry this one is per task (a segmenter and a
classifier are built and checked differently) and has no pretrained-weight tags: spinenet downloads nothing.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType, MappingProxyType
from typing import Any

from spinenet.errors import ConfigError

__all__ = ["CLASSIFIERS", "SEGMENTERS", "ModelEntry", "Registry", "normalize_name"]

SizeRule = int | Callable[[Mapping[str, Any]], int]


def normalize_name(value: Any) -> str:
    """The lookup form of a model name: lower case, ``-`` and spaces as ``_``."""
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model; :meth:`Registry.register` fills it from the decorated builder."""

    name: str
    builder: Callable[..., Any]
    description: str
    min_size: int = 1
    multiple: SizeRule = 1
    # options the builder accepts beyond the fixed arguments (None: anything, the builder checks them)
    options: tuple[str, ...] | None = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_defaults(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without the unset (None) ones, on top of :attr:`defaults`."""
        return {**self.defaults, **{k: v for k, v in options.items() if v is not None}}

    def required_multiple(self, options: Mapping[str, Any] | None = None) -> int:
        """What input height and width must be a multiple of, for these options (None: unset)."""
        rule = self.multiple
        return max(1, int(rule(self.with_defaults(options or {})) if callable(rule) else rule))

    def accepts(self, parameter: str) -> bool:
        """Whether the builder takes ``parameter`` itself (e.g. ``pretrained_path``: it loads weights)."""
        return parameter in inspect.signature(self.builder).parameters


class Registry:
    """Name -> :class:`ModelEntry` for one kind of model (``"segmenter"``, ``"classifier"``).

    ``fixed``: the arguments every builder of this kind receives from its factory (not model options);
    ``setting``: the config key that names the model, for error messages; ``extra``: the kind's own entry
    fields with their defaults (e.g. a segmenter's ``encoders``), the only extra keywords ``register`` takes.
    """

    def __init__(self, kind: str, setting: str, fixed: Sequence[str] = (), extra: Mapping[str, Any] | None = None):
        self.kind = kind
        self.setting = setting
        self.fixed = tuple(fixed)
        self._extra_defaults = dict(extra or {})
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        min_size: int = 1,
        multiple: SizeRule = 1,
        options: Sequence[str] | None | EllipsisType = ...,
        defaults: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        **extra: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the builder under ``name`` (default: the function's name); returns it unchanged.

        ``options``/``defaults``: read from the builder's parameters (minus :attr:`fixed`) unless given;
        ``options=None`` (the default for a builder that takes ``**kwargs``) passes any option through.
        A name or alias that is already taken is an error (:meth:`unregister` it first).
        """
        unknown = sorted(set(extra) - set(self._extra_defaults))
        if unknown:
            raise TypeError(f"{self.kind} registry: unknown entry field(s) {unknown}; "
                            f"valid: {', '.join(self._extra_defaults) or 'none'}")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = normalize_name(name or fn.__name__)
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.name not in self.fixed and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
            own_options = (None if takes_any else tuple(p.name for p in params)) if options is ... else options
            own_defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
            keys = [key, *(normalize_name(a) for a in aliases)]
            taken = [k for k in keys if k in self._entries or k in self._aliases]
            if taken:
                raise ValueError(f"{self.kind} registry: {', '.join(taken)} already registered")
            doc = (description or inspect.getdoc(fn) or "").strip().splitlines()
            self._entries[key] = ModelEntry(
                name=key,
                builder=fn,
                description=doc[0] if doc else "",
                min_size=int(min_size),
                multiple=multiple,
                options=None if own_options is None else tuple(own_options),
                defaults=MappingProxyType({**own_defaults, **(defaults or {})}),
                aliases=tuple(keys[1:]),
                extra=MappingProxyType({**self._extra_defaults, **extra}),
            )
            self._aliases.update({a: key for a in keys[1:]})
            return fn

        return decorate

    def unregister(self, name: str) -> ModelEntry:
        """Remove ``name`` and its aliases (tests that register a toy model clean up with this)."""
        entry = self._entries.pop(normalize_name(name))
        for alias in entry.aliases:
            self._aliases.pop(alias, None)
        return entry

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; ConfigError listing the choices."""
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise ConfigError(f"{self.setting}: unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return key

    def get(self, name: str) -> ModelEntry:
        return self._entries[self.canonical(name)]

    def names(self, pattern: str = "") -> tuple[str, ...]:
        """Registered names in registration order, optionally those matching a wildcard ``pattern``."""
        return tuple(n for n in self._entries if not pattern or fnmatch.fnmatchcase(n, pattern))

    def entries(self) -> tuple[ModelEntry, ...]:
        return tuple(self._entries.values())

    def describe(self) -> str:
        """One line per model: name and description (for help texts)."""
        width = max((len(n) for n in self._entries), default=0)
        return "\n".join(f"{e.name:<{width}}  {e.description}" for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        key = normalize_name(name)
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} models)"


SEGMENTERS = Registry(
    "segmenter",
    setting="model.net.name",
    fixed=("num_classes", "in_channels", "encoder", "encoder_weights"),
    # encoders: the encoder names the net can use, the first one its default (None: no encoder choice);
    # encoder_note: why other encoders do not work (shown when one is chosen); size_note: the size rule in
    # words for error messages, formatted with the options (e.g. "with depth {depth} (2**depth)")
    extra={"encoders": None, "encoder_note": "", "size_note": ""},
)
CLASSIFIERS = Registry(
    "classifier",
    setting="model.name",
    fixed=("num_classes", "in_channels", "image_size", "pretrained_path", "head"),
    # no_dense_head: why model.head (new dense layers on the pooled features) does not apply, if it does not
    extra={"no_dense_head": ""},
)
